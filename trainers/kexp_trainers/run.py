"""The trainer's entry point (``python -m kexp_trainers.run``): the trainer contract in action.

Reads the config at ``$KEXP_CONFIG``, seeds everything, resumes from the latest checkpoint
under the run's S3 prefix if there is one (else warm-starts from ``$KEXP_INIT_CHECKPOINT``
when ``spec.initFrom`` gave one), trains, checkpoints in the background, evaluates, and writes
``results.json``. A config it cannot honour fails at start with a message naming the field,
and still writes ``results.json`` so the operator can harvest the reason.

Under ``torchrun`` (multi-node BC: ``WORLD_SIZE`` > 1) every process trains, but only rank 0
speaks for the run: checkpoints, progress, metrics.csv, results.json and ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from kexp.api import contract
from kexp.api.reports import CheckpointsReport
from kexp.api.validation import IMITATION_ALGORITHMS
from kexp.storage.s3 import s3_client
from kexp_trainers.envs.scores import EpisodeMetrics, aggregate
from kexp_trainers.runtime.checkpoints import CheckpointStore
from kexp_trainers.runtime.config import ConfigError, RunConfig, load_config
from kexp_trainers.runtime.datasets import (
    DatasetError,
    Demonstrations,
    check_compatible,
    read_dataset,
    split_uri,
)
from kexp_trainers.runtime.environment import environment_report, pick_device, seed_everything
from kexp_trainers.runtime.metrics import LOSSES, TrainerMetrics
from kexp_trainers.runtime.reporting import RunReporter
from kexp_trainers.runtime.s3 import credentials_from_env

#: A progress line in the log at most this often (the heartbeat file is the fast channel).
LOG_EVERY_S = 10.0
#: Greedy episodes of a warm-started policy before training (``init_reward`` in metrics.csv),
#: at most: enough to see that the policy it starts from is the one it was given.
INIT_EVAL_EPISODES = 10

log = logging.getLogger("kexp_trainers")


def _scores(returns: list[tuple[float, dict[str, Any]]]) -> dict[str, float]:
    """Run scores: reward always; the AD metrics (and PDM score) when the environment is a
    driving one (``make_env`` wraps it with ``ADMetrics``, whose final info carries them)."""
    from kexp_trainers.envs.highway import episode_metrics

    measured = [episode_metrics(total, info) for total, info in returns]
    if measured and all(m is not None for m in measured):
        return aggregate([m for m in measured if m is not None])
    # Without driving metrics the AD scores would only repeat their defaults.
    rewards = [
        EpisodeMetrics(
            reward=total,
            no_collision=1.0,
            drivable_area_compliance=1.0,
            ego_progress=1.0,
            ttc_compliance=1.0,
            comfort=1.0,
        )
        for total, _info in returns
    ]
    scores = aggregate(rewards)
    return {k: v for k, v in scores.items() if k in ("episodes", "reward", "reward_std")}


def _algorithms() -> dict[str, tuple[Any, Any]]:
    """Each algorithm's module and the args dataclass its hyperparameters are read into."""
    from kexp_trainers.algorithms import bc, cimrl, gail, ppo, sac

    return {
        "PPO": (ppo, ppo.PPOArgs),
        "SAC": (sac, sac.SACArgs),
        "BC": (bc, bc.BCArgs),
        "GAIL": (gail, gail.GAILArgs),
        "CIMRL": (cimrl, cimrl.CIMRLArgs),
    }


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0") or 0)


def _world_size() -> int:
    """How many processes train this run (torchrun's ``WORLD_SIZE``; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


class _SilentReporter(RunReporter):
    """The reporter of a rank other than 0: it keeps count, but writes nothing to S3.

    Rank 0 speaks for the run; a second writer would interleave heartbeats and could replace
    rank 0's results.json with its own.
    """

    def _submit(self, name: str, text: str, content_type: str) -> None:
        return None


def action_space_description(space: Any) -> dict[str, Any]:
    """An environment's action space as a dataset's manifest describes it."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return {"type": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box):
        return {"type": "box", "shape": [int(d) for d in space.shape]}
    return {"type": type(space).__name__}


def load_expert_data(client: Any, spec: dict[str, Any], envs: Any) -> Demonstrations:
    """The demonstrations at spec.expertData, checked against the run's environment.

    Anything that makes them unusable (no URI, no dataset there, a broken shard, another
    environment or action space) is a ConfigError naming spec.expertData.
    """
    from minio.error import S3Error

    uri = spec.get("expertData")
    if not uri:
        raise ConfigError(
            f"spec.expertData: required for {spec['algorithm']} "
            "(an s3:// URI of expert demonstrations)",
            "spec.expertData",
        )
    try:
        data = read_dataset(client, str(uri))
        check_compatible(
            data,
            spec["environment"]["id"],
            tuple(envs.single_observation_space.shape),
            action_space_description(envs.single_action_space),
        )
    except DatasetError as exc:
        raise ConfigError(str(exc), "spec.expertData") from exc
    except (S3Error, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(
            f"spec.expertData: {uri} cannot be read: {type(exc).__name__}: {exc}",
            "spec.expertData",
        ) from exc
    log.info(
        "expert data %s: %d transitions in %d episodes%s",
        uri,
        data.transitions,
        data.episodes,
        f", expert reward {data.expert_scores['reward']:.4g}"
        if "reward" in data.expert_scores
        else "",
    )
    return data


def load_init_checkpoint(client: Any, uri: str, dest: Path) -> dict[str, Any]:
    """The checkpoint a run warm-starts from (``$KEXP_INIT_CHECKPOINT``); ConfigError naming
    spec.initFrom when it cannot be fetched or read."""
    import torch
    from minio.error import S3Error

    try:
        bucket, key = split_uri(uri)
        client.fget_object(bucket, key.rstrip("/"), str(dest))
        saved: dict[str, Any] = torch.load(dest, map_location="cpu", weights_only=False)
    except (DatasetError, S3Error, OSError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        message = str(exc).removeprefix("spec.expertData: ")
        raise ConfigError(
            f"spec.initFrom: checkpoint {uri} cannot be loaded: {message}", "spec.initFrom"
        ) from exc
    return saved


def _join_process_group(device: Any) -> Any:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPUs); the device to train on."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    log.info(
        "joined the process group (%s, %d processes) on %s", backend, dist.get_world_size(), device
    )
    return device


def train_run(
    config: RunConfig,
    store: CheckpointStore,
    reporter: RunReporter,
    metrics: TrainerMetrics,
    workdir: Path,
) -> None:
    """Train, checkpoint, evaluate and report one run."""
    import torch

    from kexp_trainers.algorithms.common import make_vector_env
    from kexp_trainers.envs.highway import make_env

    modules = _algorithms()
    algorithm = config.spec["algorithm"]
    if algorithm not in modules:
        raise ConfigError(
            f"spec.algorithm: {algorithm} is not available in this trainer yet "
            f"(available: {', '.join(modules)})",
            "spec.algorithm",
        )
    algo, args_type = modules[algorithm]
    env_spec = config.spec.get("environment") or {}
    try:
        args = args_type.from_hyperparameters(config.hyperparameters)
        env_config = dict(env_spec.get("config") or {})
        envs = make_vector_env(
            env_spec["id"],
            int(env_spec.get("numEnvs", 1)),
            config.seed,
            env_config,
            getattr(args, "vector_env", "auto"),  # PPO's (and GAIL's generator's) choice
        )
        # The same factory as training's, so evaluation sees the same observations (and, for
        # driving environments, reports the AD metrics _scores reads).
        eval_env = make_env(env_spec["id"], env_config, config.seed)
        algo.new_state(envs, args, torch.device("cpu"))  # refuses an action space it cannot use
    except ValueError as exc:
        raise ConfigError(str(exc), str(exc).split(":", 1)[0]) from exc
    try:
        rank, world_size = _rank(), _world_size()
        if world_size > 1 and algorithm != "BC":
            raise ConfigError(
                f"spec.resources.nodes: only BC trains data-parallel over several processes; "
                f"run {algorithm} on one node",
                "spec.resources.nodes",
            )
        expert = None
        if algorithm in IMITATION_ALGORITHMS:
            expert = load_expert_data(store.client, config.spec, envs)
            if hasattr(algo, "check_expert"):
                try:
                    algo.check_expert(expert, args, world_size)
                except ValueError as exc:
                    raise ConfigError(str(exc), str(exc).split(":", 1)[0]) from exc
        init_uri = os.environ.get(contract.ENV_INIT_CHECKPOINT) or config.init_checkpoint
        if getattr(algo, "REQUIRES_INIT_CHECKPOINT", False) and not init_uri:
            raise ConfigError(
                f"spec.initFrom: {algorithm} fine-tunes a trained policy; set spec.initFrom to "
                f"the BC experiment it starts from (no ${contract.ENV_INIT_CHECKPOINT} was given)",
                "spec.initFrom",
            )
        if init_uri and not hasattr(algo, "warm_start"):
            raise ConfigError(
                f"spec.initFrom: {algorithm} cannot warm-start from another run's checkpoint",
                "spec.initFrom",
            )

        device = pick_device()
        if world_size > 1:
            device = _join_process_group(device)
        state = None
        found = store.latest()
        episodes = int((config.spec.get("evaluation") or {}).get("episodes", 10))
        if found is not None:
            step, key = found
            saved = torch.load(
                store.download(key, workdir / "resume.pt"), map_location="cpu", weights_only=False
            )
            state = algo.load_state(saved, envs, args, device)
            log.info("resumed from %s at step %d", key, step)
        elif init_uri:
            saved = load_init_checkpoint(store.client, init_uri, workdir / "init.pt")
            state = algo.new_state(envs, args, device)
            try:
                algo.warm_start(state, saved)
            except ValueError as exc:
                raise ConfigError(str(exc), "spec.initFrom") from exc
            if rank == 0:
                # Evidence that the run starts from the policy it was given, not from scratch.
                returns = algo.evaluate(
                    state, eval_env, min(episodes, INIT_EVAL_EPISODES), config.seed, device
                )
                init_reward = sum(r for r, _ in returns) / len(returns)
                reporter.log(0, {"init_reward": init_reward})
                log.info(
                    "warm-started from %s (%s); its greedy reward %.4g over %d episodes",
                    init_uri,
                    saved.get("algorithm", "checkpoint"),
                    init_reward,
                    len(returns),
                )

        saved_steps: set[int] = set()

        def checkpoint(s: Any) -> None:
            if rank != 0 or s.step in saved_steps:
                return  # rank 0 checkpoints for all; the last periodic one may be the final one
            saved_steps.add(s.step)
            path = workdir / f"step-{s.step}.pt"
            torch.save(algo.state_dict(s), path)
            store.save(s.step, path, best=True)

        def update(step: int, stats: dict[str, float]) -> None:
            if rank != 0:
                return
            metrics.steps.inc(step - update.last)  # type: ignore[attr-defined]
            update.last = step  # type: ignore[attr-defined]
            metrics.steps_per_second.set(stats.get("sps", 0.0))
            if "episode_reward" in stats:
                metrics.episode_reward.set(stats["episode_reward"])
            for name in LOSSES:
                if name in stats:
                    metrics.loss(name, stats[name])
            if device.type == "cuda":
                metrics.gpu_memory_bytes.set(torch.cuda.memory_allocated(device))
            reporter.log(step, stats)
            now = time.monotonic()
            if now - update.logged >= LOG_EVERY_S or step >= config.total_steps:  # type: ignore[attr-defined]
                update.logged = now  # type: ignore[attr-defined]
                shown = ("episode_reward", "bc_loss", "val_loss", "disc_loss")
                log.info(
                    "step %d/%d (%.0f%%) %.0f steps/s%s",
                    step,
                    config.total_steps,
                    100.0 * step / config.total_steps,
                    stats.get("sps", 0.0),
                    "".join(f" {k} {stats[k]:.4g}" for k in shown if k in stats),
                )

        update.last = state.step if state else 0  # type: ignore[attr-defined]
        log.info(
            "training %s on %s for %d steps on %s%s",
            algorithm,
            env_spec["id"],
            config.total_steps,
            device,
            f" ({world_size} processes)" if world_size > 1 else "",
        )
        update.logged = time.monotonic()  # type: ignore[attr-defined]
        every = (config.spec.get("training") or {}).get("checkpointEvery")
        state = algo.train(
            envs,
            args,
            config.total_steps,
            device,
            state=state,
            on_update=update,
            on_checkpoint=checkpoint,
            checkpoint_every=every,
            **({"expert": expert} if expert is not None else {}),
        )
        checkpoint(state)
        if rank != 0:
            log.info("trained to step %d; rank 0 evaluates and reports", state.step)
            return
        log.info("trained to step %d; evaluating", state.step)
        scores = _scores(algo.evaluate(state, eval_env, episodes, config.seed, device))
        for name, value in scores.items():
            metrics.eval_score(name, value)
        log.info(
            "evaluation over %d episodes: %s",
            episodes,
            ", ".join(f"{k} {v:.4g}" for k, v in sorted(scores.items())),
        )
        store.close()
        latest = store.uri(contract.step_checkpoint(state.step))
        reporter.finish(
            scores,
            checkpoints=CheckpointsReport(
                latest=latest, best=store.uri(contract.BEST_CHECKPOINT), best_step=state.step
            ),
            environment=environment_report(
                config.seed, (config.spec.get("source") or {}).get("commit")
            ),
        )
    finally:
        envs.close()  # AsyncVectorEnv's worker processes end here, not at exit


def main() -> int:
    """Run the configured experiment; exit 0 on success, 1 on a failed run, 2 on bad config."""
    rank, world_size = _rank(), _world_size()
    where = f"[rank {rank}/{world_size}] " if world_size > 1 else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {where}%(message)s")
    try:
        config = load_config()
    except ConfigError as exc:
        log.error("%s", exc)
        # Without a valid config the prefix is still known from the contract's variables.
        prefix = os.environ.get(contract.ENV_S3_PREFIX)
        if prefix and rank == 0:
            bucket = os.environ.get(contract.ENV_S3_BUCKET, contract.DEFAULT_BUCKET)
            try:
                client = s3_client(credentials_from_env())
                RunReporter(client, bucket, prefix, total_steps=1).fail(str(exc), field=exc.field)
            except Exception as report_exc:  # the config error is the news, not this
                log.error("results.json not written: %s", report_exc)
        return 2
    try:
        client = s3_client(credentials_from_env())
    except FileNotFoundError as exc:
        log.error("%s", exc)  # nowhere to write results.json: the log is all there is
        return 2
    seed_everything(config.seed)
    metrics = TrainerMetrics(config.name, config.namespace)
    port = int(os.environ.get(contract.ENV_METRICS_PORT, "0") or 0)
    served = bool(port) and rank == 0
    if served:
        metrics.serve(port)  # one scrape target per run; ranks of one pod would share the port
    store = CheckpointStore(
        client,
        config.bucket,
        config.prefix,
        on_upload=lambda r: metrics.checkpoint_upload_seconds.observe(r.seconds),
    )
    reporter_type = RunReporter if rank == 0 else _SilentReporter
    reporter = reporter_type(client, config.bucket, config.prefix, config.total_steps)
    with tempfile.TemporaryDirectory(prefix="kexp-run-") as tmp:
        try:
            train_run(config, store, reporter, metrics, Path(tmp))
        except ConfigError as exc:
            reporter.fail(
                str(exc), field=exc.field, environment=environment_report(config.seed, None)
            )
            log.error("%s", exc)
            return 2
        except Exception as exc:
            reporter.fail(
                f"{type(exc).__name__}: {exc}", environment=environment_report(config.seed, None)
            )
            raise
        finally:
            _leave_process_group()
            if served and not metrics.await_final_scrape():
                log.info("no scrape after the final values; exiting without it")
    return 0


def _leave_process_group() -> None:
    """Leave torchrun's process group, if this process joined one."""
    if _world_size() > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
