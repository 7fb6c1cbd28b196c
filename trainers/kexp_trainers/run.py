"""The trainer's entry point (``python -m kexp_trainers.run``): the trainer contract in action.

Reads the config at ``$KEXP_CONFIG``, seeds everything, resumes from the latest checkpoint
under the run's S3 prefix if there is one, trains, checkpoints in the background, evaluates,
and writes ``results.json``. A config it cannot honour fails at start with a message naming
the field, and still writes ``results.json`` so the operator can harvest the reason.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kexp.api import contract
from kexp.api.reports import CheckpointsReport
from kexp.storage.s3 import s3_client
from kexp_trainers.envs.scores import EpisodeMetrics, aggregate
from kexp_trainers.runtime.checkpoints import CheckpointStore
from kexp_trainers.runtime.config import ConfigError, RunConfig, load_config
from kexp_trainers.runtime.environment import environment_report, pick_device, seed_everything
from kexp_trainers.runtime.metrics import TrainerMetrics
from kexp_trainers.runtime.reporting import RunReporter
from kexp_trainers.runtime.s3 import credentials_from_env

#: A progress line in the log at most this often (the heartbeat file is the fast channel).
LOG_EVERY_S = 10.0

log = logging.getLogger("kexp_trainers")


def _scores(returns: list[tuple[float, dict[str, Any]]]) -> dict[str, float]:
    """Run scores: reward always; the AD metrics when the environment reports them."""
    episodes = []
    for total, info in returns:
        crashed = bool(info.get("crashed", False))
        episodes.append(
            EpisodeMetrics(
                reward=total,
                no_collision=0.0 if crashed else 1.0,
                drivable_area_compliance=float(
                    info.get("on_road", 1.0) if "on_road" in info else 1.0
                ),
                ego_progress=min(1.0, max(0.0, float(info.get("progress", 1.0)))),
                ttc_compliance=float(info.get("ttc_compliance", 1.0)),
                comfort=float(info.get("comfort", 1.0)),
            )
        )
    scores = aggregate(episodes)
    if not any("crashed" in info for _t, info in returns):
        # Without driving metrics the AD scores would only repeat their defaults.
        scores = {k: v for k, v in scores.items() if k in ("episodes", "reward", "reward_std")}
    return scores


def train_run(
    config: RunConfig,
    store: CheckpointStore,
    reporter: RunReporter,
    metrics: TrainerMetrics,
    workdir: Path,
) -> None:
    """Train, checkpoint, evaluate and report one run (PPO for now)."""
    import gymnasium as gym
    import torch

    from kexp_trainers.algorithms import ppo, sac
    from kexp_trainers.algorithms.common import make_vector_env

    modules = {"PPO": ppo, "SAC": sac}
    algorithm = config.spec["algorithm"]
    if algorithm not in modules:
        raise ConfigError(
            f"spec.algorithm: {algorithm} is not available in this trainer yet "
            f"(available: {', '.join(modules)})",
            "spec.algorithm",
        )
    algo: Any = modules[algorithm]
    env_spec = config.spec.get("environment") or {}
    args_type = ppo.PPOArgs if algo is ppo else sac.SACArgs
    try:
        args = args_type.from_hyperparameters(config.hyperparameters)
        envs = make_vector_env(
            env_spec["id"],
            int(env_spec.get("numEnvs", 1)),
            config.seed,
            dict(env_spec.get("config") or {}),
        )
        algo.new_state(envs, args, torch.device("cpu"))  # refuses an action space it cannot use
    except ValueError as exc:
        raise ConfigError(str(exc), str(exc).split(":", 1)[0]) from exc
    device = pick_device()
    state = None
    found = store.latest()
    if found is not None:
        step, key = found
        saved = torch.load(store.download(key, workdir / "resume.pt"), weights_only=False)
        state = algo.load_state(saved, envs, args, device)
        log.info("resumed from %s at step %d", key, step)

    saved_steps: set[int] = set()

    def checkpoint(s: Any) -> None:
        if s.step in saved_steps:
            return  # the last periodic checkpoint may already be the final one
        saved_steps.add(s.step)
        path = workdir / f"step-{s.step}.pt"
        torch.save(algo.state_dict(s), path)
        store.save(s.step, path, best=True)

    def update(step: int, stats: dict[str, float]) -> None:
        metrics.steps.inc(step - update.last)  # type: ignore[attr-defined]
        update.last = step  # type: ignore[attr-defined]
        metrics.steps_per_second.set(stats.get("sps", 0.0))
        if "episode_reward" in stats:
            metrics.episode_reward.set(stats["episode_reward"])
        for name in ("policy_loss", "value_loss", "entropy", "q_loss", "actor_loss"):
            if name in stats:
                metrics.loss(name, stats[name])
        reporter.log(step, stats)
        now = time.monotonic()
        if now - update.logged >= LOG_EVERY_S or step >= config.total_steps:  # type: ignore[attr-defined]
            update.logged = now  # type: ignore[attr-defined]
            reward = stats.get("episode_reward")
            log.info(
                "step %d/%d (%.0f%%) %.0f steps/s%s",
                step,
                config.total_steps,
                100.0 * step / config.total_steps,
                stats.get("sps", 0.0),
                f" episode_reward {reward:.2f}" if reward is not None else "",
            )

    update.last = state.step if state else 0  # type: ignore[attr-defined]
    log.info(
        "training %s on %s for %d steps on %s",
        config.spec.get("algorithm"),
        env_spec["id"],
        config.total_steps,
        device,
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
    )
    checkpoint(state)
    log.info("trained to step %d; evaluating", state.step)
    episodes = int((config.spec.get("evaluation") or {}).get("episodes", 10))
    eval_env = gym.make(
        env_spec["id"], **({"config": env_spec["config"]} if env_spec.get("config") else {})
    )
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


def main() -> int:
    """Run the configured experiment; exit 0 on success, 1 on a failed run, 2 on bad config."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    client = s3_client(credentials_from_env())
    try:
        config = load_config()
    except ConfigError as exc:
        # Without a valid config the prefix is still known from the contract's variables.
        prefix = os.environ.get(contract.ENV_S3_PREFIX)
        if prefix:
            bucket = os.environ.get(contract.ENV_S3_BUCKET, contract.DEFAULT_BUCKET)
            RunReporter(client, bucket, prefix, total_steps=1).fail(str(exc), field=exc.field)
        log.error("%s", exc)
        return 2
    seed_everything(config.seed)
    metrics = TrainerMetrics(config.name, config.namespace)
    port = int(os.environ.get(contract.ENV_METRICS_PORT, "0") or 0)
    if port:
        metrics.serve(port)
    store = CheckpointStore(
        client,
        config.bucket,
        config.prefix,
        on_upload=lambda r: metrics.checkpoint_upload_seconds.observe(r.seconds),
    )
    reporter = RunReporter(client, config.bucket, config.prefix, config.total_steps)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
