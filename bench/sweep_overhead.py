"""Sweep overhead: a Ray Tune sweep through kexp vs the same trainable on plain Ray Tune.

Goal (sweeps issue): a sweep of 64 short trials run through kexp takes at most 1.1x the wall
time of the same trials run directly with plain Ray Tune, on the same machine, in the same run.

Both sides are separate processes started the same way (Python, torch and Ray start-up count
on both sides) and run the same search: ``--trials`` PPO trials on CartPole of ``--steps``
environment steps each, learning rates sampled log-uniformly with the same seed, the same
concurrency (``--concurrency``, 2 on this 2-core machine), actor reuse, no scheduler (so every
trial does the same work on both sides), and a final evaluation per trial.

- *plain*: a function trainable that calls the PPO module directly (``ppo.train`` with
  ``tune.report`` per update, then ``ppo.evaluate``); Tune keeps its state on local disk,
  with Tune's defaults.
- *plain, lean*: the same, with Tune's per-trial file loggers off
  (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``), as kexp runs Tune: this isolates what kexp
  itself adds, and the goal is checked against it (the stricter baseline).
- *kexp*: ``python -m kexp_trainers.tune`` with the config and S3 credentials files the
  operator would mount; each trial is a full kexp run (``train_run``: S3 checkpoint, heartbeat,
  metrics.csv, results.json under ``trials/<trial>/``), Tune's state goes to S3 (MinIO) and
  ``sweep.json`` is rewritten while it runs.

Each round runs plain, lean and kexp back to back (``--repeat`` rounds), so that a slow phase
of the shared machine hits all three; the goal is checked on the median of the rounds'
kexp/lean ratios, and the table shows each side's median.

    .venv/bin/python -m bench.sweep_overhead            # about 12 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from kexp.api import contract

GOAL_RATIO = 1.1
SEED = 7


def sweep_spec(trials: int, concurrency: int, steps: int) -> dict[str, Any]:
    """The Experiment spec both sides run."""
    return {
        "algorithm": "PPO",
        "environment": {"id": "CartPole-v1", "numEnvs": 2},
        "hyperparameters": {"nSteps": 64, "batchSize": 64, "nEpochs": 2},
        "training": {"totalSteps": steps, "seed": SEED},
        "evaluation": {"episodes": 2},
        "objective": {"metric": "reward", "mode": "max"},
        "sweep": {
            "numSamples": trials,
            "maxConcurrentTrials": concurrency,
            "parameters": {"learningRate": {"logUniform": [1.0e-4, 1.0e-2]}},
        },
    }


# ---- the plain side (runs in its own process: ``python -m bench.sweep_overhead plain``) -------
def plain_trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """The same training and evaluation as a kexp trial, without anything kexp adds."""
    import torch
    from ray import tune

    from kexp_trainers.algorithms import ppo
    from kexp_trainers.algorithms.common import make_vector_env
    from kexp_trainers.envs.highway import make_env
    from kexp_trainers.runtime.environment import seed_everything

    seed = spec["training"]["seed"]
    seed_everything(seed)
    args = ppo.PPOArgs.from_hyperparameters({**spec["hyperparameters"], **config})
    env = spec["environment"]
    envs = make_vector_env(env["id"], env["numEnvs"], seed, {})
    device = torch.device("cpu")

    def update(step: int, stats: dict[str, float]) -> None:
        result = {**{k: float(v) for k, v in stats.items()}, "step": step}
        if "episode_reward" in stats:
            result["reward"] = float(stats["episode_reward"])  # what kexp's trials report too
        tune.report(result)

    state = ppo.train(envs, args, spec["training"]["totalSteps"], device, on_update=update)
    returns = ppo.evaluate(state, make_env(env["id"], {}, seed), 2, seed, device)
    tune.report({"reward": sum(r for r, _ in returns) / len(returns), "step": state.step})


def run_plain(spec: dict[str, Any], storage: str) -> dict[str, Any]:
    """Plain Ray Tune: the same search and trials, state on local disk."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    started = time.perf_counter()
    sweep = spec["sweep"]
    # As kexp sets it: a trial's first updates may have no episode reward yet.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    ray.init(
        num_cpus=sweep["maxConcurrentTrials"],
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
    )
    low, high = sweep["parameters"]["learningRate"]["logUniform"]
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(plain_trial, spec=spec), {"cpu": 1}),
        param_space={"learningRate": tune.loguniform(low, high)},
        tune_config=tune.TuneConfig(
            metric="reward",
            mode="max",
            search_alg=BasicVariantGenerator(
                random_state=SEED, max_concurrent=sweep["maxConcurrentTrials"]
            ),
            num_samples=sweep["numSamples"],
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name="plain", storage_path=storage, verbose=0),
    )
    fit_started = time.perf_counter()
    grid = tuner.fit()
    fit_s = time.perf_counter() - fit_started
    ok = sum(1 for r in grid if r.error is None)
    ray.shutdown()
    return {"fit_s": fit_s, "in_process_s": time.perf_counter() - started, "trials_ok": ok}


# ---- the driver ----------------------------------------------------------------------------
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _log_time(line: str) -> datetime | None:
    match = _LOG_TIME.match(line)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f") if match else None


def kexp_fit_seconds(log: str) -> float | None:
    """From the driver's 'sweep <ns>/<name>:' line (just before Tuner.fit) to its 'tuner
    finished' line (just after)."""
    start = end = None
    for line in log.splitlines():
        if " INFO sweep bench/" in line and start is None:
            start = _log_time(line)
        elif " INFO tuner finished:" in line:
            end = _log_time(line)
    return (end - start).total_seconds() if start and end else None


def once_plain(spec: dict[str, Any], workdir: Path, lean: bool = False) -> dict[str, Any]:
    spec_file = workdir / "plain-spec.json"
    spec_file.write_text(json.dumps(spec))
    storage = workdir / f"plain-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.sweep_overhead", "plain", str(spec_file), str(storage)],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            **({"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"} if lean else {}),
        },
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"plain sweep failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, **result}


def once_kexp(spec: dict[str, Any], workdir: Path, creds_dir: Path, s3: Any) -> dict[str, Any]:
    uid = uuid.uuid4().hex
    config = {
        "apiVersion": "kexp.io/v1alpha1",
        "kind": "ExperimentConfig",
        "metadata": {"name": "sweep", "namespace": "bench", "uid": uid},
        "spec": spec,
        "storage": {
            "bucket": contract.DEFAULT_BUCKET,
            "prefix": contract.s3_prefix("bench", "sweep", uid),
        },
    }
    config_file = workdir / f"kexp-{uid[:8]}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        contract.ENV_CONFIG: str(config_file),
        contract.ENV_S3_SECRET_DIR: str(creds_dir),
        contract.ENV_S3_BUCKET: contract.DEFAULT_BUCKET,
        contract.ENV_S3_PREFIX: config["storage"]["prefix"],
        contract.ENV_METRICS_PORT: "0",
    }
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kexp_trainers.tune"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    wall = time.perf_counter() - started
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"kexp sweep failed (exit {proc.returncode}):\n{log[-4000:]}")
    from kexp.api.reports import SweepReport
    from kexp.storage.s3 import read_object

    raw = read_object(s3, contract.DEFAULT_BUCKET, config["storage"]["prefix"] + "sweep.json")
    report = SweepReport.model_validate_json(raw or b"{}")
    ok = sum(1 for t in report.trials if t.state == "completed")
    return {"wall_s": wall, "fit_s": kexp_fit_seconds(log), "trials_ok": ok}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "plain":
        spec = json.loads(Path(sys.argv[2]).read_text())
        print(json.dumps(run_plain(spec, sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2048, help="environment steps per trial")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of plain, lean, kexp")
    parser.add_argument("--port-base", type=int, default=29900)
    parser.add_argument("--state-dir", type=Path, default=None, help="reuse a stack here")
    args = parser.parse_args()

    from bench.stacks import bench_stack
    from kexp.storage.s3 import ensure_bucket, s3_client

    spec = sweep_spec(args.trials, args.concurrency, args.steps)
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "lean": [], "kexp": []}
    with bench_stack(args.state_dir, args.port_base) as stack:
        creds = stack.s3_credentials()
        s3 = s3_client(creds)
        ensure_bucket(s3, contract.DEFAULT_BUCKET)
        with tempfile.TemporaryDirectory(prefix="kexp-sweep-bench-") as work:
            workdir = Path(work)
            creds_dir = workdir / "s3"
            creds_dir.mkdir()
            for key, value in {
                contract.S3_ACCESS_KEY: creds.access_key,
                contract.S3_SECRET_KEY: creds.secret_key,
                contract.S3_ENDPOINT_KEY: creds.endpoint,
                contract.S3_REGION_KEY: creds.region,
            }.items():
                (creds_dir / key).write_text(value)
            for round_ in range(args.repeat):
                runs["plain"].append(once_plain(spec, workdir))
                runs["lean"].append(once_plain(spec, workdir, lean=True))
                runs["kexp"].append(once_kexp(spec, workdir, creds_dir, s3))
                print(
                    f"round {round_ + 1}: "
                    + ", ".join(f"{k} {v[-1]['wall_s']:.1f} s" for k, v in runs.items()),
                    file=sys.stderr,
                )

    def median(side: str, key: str) -> float:
        values = [r[key] for r in runs[side] if r.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    # Each round runs its sides back to back, so a round's ratio sees one state of the
    # shared machine; the goal is checked on the median of the rounds' ratios.
    pairs = zip(runs["kexp"], runs["lean"], strict=True)
    per_round = [kexp["wall_s"] / lean["wall_s"] for kexp, lean in pairs]
    ratio = statistics.median(per_round)
    ratio_default = median("kexp", "wall_s") / median("plain", "wall_s")
    fit_ratio = median("kexp", "fit_s") / median("lean", "fit_s")
    print(
        f"sweep of {args.trials} trials x {args.steps} steps, {args.concurrency} at a time, "
        f"{args.repeat} round(s), {os.cpu_count()}-core machine (medians)"
    )
    header = ("plain Tune", "plain, lean", "kexp", "kexp/lean", "kexp/plain")
    print(f"  {'':<26}" + "".join(f"{h:>13}" for h in header))
    for label, key in (("process wall time (s)", "wall_s"), ("Tuner.fit (s)", "fit_s")):
        cells = [median(side, key) for side in ("plain", "lean", "kexp")]
        print(
            f"  {label:<26}"
            + "".join(f"{c:>13.1f}" for c in cells)
            + f"{cells[2] / cells[1]:>13.3f}{cells[2] / cells[0]:>13.3f}"
        )
    done = [min(r["trials_ok"] for r in runs[side]) for side in ("plain", "lean", "kexp")]
    print(f"  {'trials completed':<26}" + "".join(f"{d:>13}" for d in done))
    print(f"  kexp/lean wall time by round: {', '.join(f'{r:.3f}' for r in per_round)}")
    met = ratio <= GOAL_RATIO
    print(
        f"goal: kexp <= {GOAL_RATIO}x plain Ray Tune wall time (lean baseline, median of the "
        f"rounds' ratios): {ratio:.3f} {'met' if met else 'NOT met'}"
    )
    print(
        json.dumps(
            {
                "trials": args.trials,
                "steps": args.steps,
                "concurrency": args.concurrency,
                "runs": runs,
                "ratio_wall": ratio,
                "ratio_wall_by_round": per_round,
                "ratio_wall_vs_default_tune": ratio_default,
                "ratio_fit": fit_ratio,
                "goal_met": met,
            }
        )
    )


if __name__ == "__main__":
    main()
