"""A minimal custom trainer that follows kexp's trainer contract, using only minio and PyYAML.

It fits y = a*x + b to noisy data by SGD: small enough to read in one sitting, complete enough
to show everything the operator relies on (docs/custom-trainer.md explains each part):

- reads the resolved Experiment at $KEXP_CONFIG and the S3 credentials from the files in
  $KEXP_S3_SECRET_DIR (never from environment values);
- writes under s3://$KEXP_S3_BUCKET/$KEXP_S3_PREFIX: a progress.json heartbeat, metrics.csv,
  checkpoints (resuming from checkpoints/latest if a previous pod got that far),
  eval/scenarios.csv (for spec.evaluation.resultsCsv) and, last, results.json;
- exits 0 when it trained, 2 when the config asks for something it cannot do (after writing a
  results.json that names the field), 1 on any other failure.

    pip install minio pyyaml
    python train.py        # with the environment a kexp pod gets
"""

# ruff: noqa: S311 - seeded random numbers make the toy data reproducible; nothing here is secret

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import platform
import random
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import yaml
from minio import Minio
from minio.error import S3Error

HEARTBEAT_S = 5.0


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigError(ValueError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class Run:
    """Where this run writes: the bucket and prefix the operator chose."""

    def __init__(self) -> None:
        secrets = Path(os.environ.get("KEXP_S3_SECRET_DIR", "/var/run/secrets/kexp/s3"))

        def secret(key: str, default: str | None = None) -> str:
            path = secrets / key
            if path.exists():
                return path.read_text().strip()
            if default is None:
                raise FileNotFoundError(f"{path} is missing: is the S3 Secret mounted?")
            return default

        endpoint = urlparse(secret("AWS_ENDPOINT_URL"))
        self.s3 = Minio(
            endpoint.netloc,
            access_key=secret("AWS_ACCESS_KEY_ID"),
            secret_key=secret("AWS_SECRET_ACCESS_KEY"),
            region=secret("AWS_REGION", "us-east-1"),
            secure=endpoint.scheme == "https",
        )
        self.bucket = os.environ["KEXP_S3_BUCKET"]
        self.prefix = os.environ["KEXP_S3_PREFIX"]

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def put(self, key: str, text: str, content_type: str = "application/json") -> None:
        data = text.encode()
        self.s3.put_object(
            self.bucket, self.prefix + key, io.BytesIO(data), len(data), content_type=content_type
        )

    def get(self, key: str) -> str | None:
        try:
            resp = self.s3.get_object(self.bucket, self.prefix + key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise
        try:
            return resp.read().decode()
        finally:
            resp.close()
            resp.release_conn()

    def results(self, **fields: object) -> None:
        """results.json: the last thing a run writes, success or failure."""
        environment = {
            "pythonVersion": platform.python_version(),
            "device": "cpu",
            "hostname": socket.gethostname(),
        }
        report = {"environment": environment, "finishedAt": now(), **fields}
        self.put("results.json", json.dumps(report))


def read_config() -> dict:
    path = Path(os.environ.get("KEXP_CONFIG", "/etc/kexp/config.yaml"))
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no config at {path} (is $KEXP_CONFIG set?)", "") from None
    spec = config["spec"]
    total = int(spec["training"]["totalSteps"])
    lr = float((spec.get("hyperparameters") or {}).get("learningRate", 0.01))
    if not 0 < lr <= 1:
        raise ConfigError(
            f"learningRate {lr} is outside (0, 1]: SGD on this problem diverges",
            "spec.hyperparameters.learningRate",
        )
    return {"total": total, "lr": lr, "seed": int(spec["training"].get("seed", 0)), "spec": spec}


def sample(rng: random.Random) -> tuple[float, float]:
    x = rng.uniform(-1, 1)
    return x, 3.0 * x + 1.0 + rng.gauss(0, 0.1)


def mse(w: dict[str, float], rng: random.Random, n: int = 200) -> float:
    return sum((w["a"] * x + w["b"] - y) ** 2 for x, y in (sample(rng) for _ in range(n))) / n


def train(run: Run, cfg: dict) -> None:
    rng = random.Random(cfg["seed"])
    w, step = {"a": 0.0, "b": 0.0}, 0
    every = int(cfg["spec"]["training"].get("checkpointEvery") or max(cfg["total"] // 4, 1))
    # Resume: a retried or preempted pod continues from the newest checkpoint.
    # checkpoints/latest holds the full key of the newest step checkpoint.
    latest = (run.get("checkpoints/latest") or "").strip()
    saved = run.get(latest.removeprefix(run.prefix)) if latest else None
    if saved:
        w, step = json.loads(saved)["weights"], json.loads(saved)["step"]
        print(f"resumed from {latest} at step {step}", flush=True)
    rows = ["step,time,loss,episode_reward"]
    started = last_beat = time.monotonic()
    first_step = step
    while step < cfg["total"]:
        x, y = sample(rng)
        err = w["a"] * x + w["b"] - y
        w["a"] -= cfg["lr"] * 2 * err * x
        w["b"] -= cfg["lr"] * 2 * err
        step += 1
        if step % 100 == 0 or step == cfg["total"]:
            loss = mse(w, random.Random(step), 50)
            rows.append(f"{step},{time.monotonic() - started:.3f},{loss:.6g},{-loss:.6g}")
            if time.monotonic() - last_beat >= HEARTBEAT_S or step == cfg["total"]:
                last_beat = time.monotonic()
                rate = (step - first_step) / max(last_beat - started, 1e-9)
                run.put(
                    "progress.json",
                    json.dumps(
                        {
                            "step": step,
                            "totalSteps": cfg["total"],
                            "stepsPerSecond": rate,
                            "updatedAt": now(),
                            "episodeReward": -loss,
                        }
                    ),
                )
        if step % every == 0 or step == cfg["total"]:
            key = f"checkpoints/step-{step}.json"
            run.put(key, json.dumps({"step": step, "weights": w}))
            run.put("checkpoints/latest", run.prefix + key, "text/plain")
    run.put("metrics.csv", "\n".join(rows) + "\n", "text/csv")

    # Evaluation: five held-out "scenarios", one row each, for spec.evaluation.resultsCsv.
    table = io.StringIO()
    out = csv.writer(table)
    out.writerow(["scenario", "mse", "r2"])
    errors = []
    for scenario in range(5):
        err = mse(w, random.Random(10_000 + scenario))
        errors.append(err)
        out.writerow([f"s{scenario}", f"{err:.6g}", f"{1 - err / 3.0:.6g}"])  # var(3x+1) = 3
    run.put("eval/scenarios.csv", table.getvalue(), "text/csv")
    best = f"checkpoints/step-{step}.json"
    run.put("checkpoints/best.json", json.dumps({"step": step, "weights": w}))
    run.results(
        outcome="succeeded",
        scores={"reward": -sum(errors) / len(errors), "a": w["a"], "b": w["b"]},
        step=step,
        checkpoints={"latest": run.uri(best), "best": run.uri("checkpoints/best.json"),
                     "bestStep": step},
    )  # fmt: skip
    print(f"trained to step {step}: a={w['a']:.3f} b={w['b']:.3f}", flush=True)


def main() -> int:
    run = Run()
    try:
        cfg = read_config()
    except ConfigError as exc:
        run.results(outcome="failed", error=str(exc), errorField=exc.field or None)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        train(run, cfg)
    except Exception as exc:
        run.results(outcome="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
