"""``python -m kexp_trainers.run`` as the pod runs it: contract env, mounted config, real MinIO."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from minio import Minio

from kexp.api import contract
from kexp.dev.cluster import render_s3_secret
from kexp.dev.stack import Stack
from kexp.render.resolved import ResolvedExperiment
from kexp.render.settings import RenderSettings
from kexp.render.training import render_config_document, render_train_job
from tests.waiting import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def pod_environment(
    stack: Stack, bucket: str, tmp_path: Path, spec: dict[str, Any], name: str
) -> tuple[dict[str, str], str]:
    """The env and files the operator's pod would get: rendered by kexp's own renderer."""
    exp = ResolvedExperiment(
        name, "research", f"uid-{name}", {**spec, "storage": {"bucket": bucket}}
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(render_config_document(exp)))
    secret_dir = tmp_path / "s3"
    secret_dir.mkdir()
    secret = render_s3_secret("kexp-s3", "research", stack.s3_credentials())
    for key, value in secret["stringData"].items():
        (secret_dir / key).write_text(value)
    container = render_train_job(exp, RenderSettings())["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update(
        {
            contract.ENV_CONFIG: str(config),
            contract.ENV_S3_SECRET_DIR: str(secret_dir),
            contract.ENV_METRICS_PORT: "0",
        }
    )
    return {**os.environ, **env, "OMP_NUM_THREADS": "1"}, exp.s3_prefix


def run(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kexp_trainers.run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def results(s3: Minio, bucket: str, prefix: str) -> dict[str, Any]:
    resp = s3.get_object(bucket, prefix + contract.RESULTS_FILE)
    try:
        data: dict[str, Any] = json.loads(resp.read())
        return data
    finally:
        resp.close()
        resp.release_conn()


SPEC = {
    "algorithm": "PPO",
    "environment": {"id": "CartPole-v1", "numEnvs": 4},
    "hyperparameters": {"learningRate": 2.5e-4, "nSteps": 128, "batchSize": 128},
    "training": {"totalSteps": 8192, "seed": 3, "checkpointEvery": 2048},
    "evaluation": {"episodes": 3},
    "source": {"commit": "b" * 40},
}


def test_a_ppo_run_writes_checkpoints_history_and_results(
    stack: Stack, s3: Minio, bucket: str, tmp_path: Path
) -> None:
    env, prefix = pod_environment(stack, bucket, tmp_path, SPEC, "ppo-smoke")
    proc = run(env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    res = results(s3, bucket, prefix)
    assert res["outcome"] == "succeeded"
    assert res["step"] == 8192
    assert res["scores"]["episodes"] == 3
    assert res["scores"]["reward"] > 0
    assert res["environment"]["gitCommit"] == "b" * 40
    assert res["environment"]["torchVersion"]
    names = {o.object_name.removeprefix(prefix) for o in s3.list_objects(bucket, prefix, True)}
    assert {
        "checkpoints/best.pt",
        "checkpoints/latest",
        "checkpoints/step-8192.pt",
        "metrics.csv",
        "progress.json",
        "results.json",
    } <= names
    assert res["checkpoints"]["best"] == f"s3://{bucket}/{prefix}checkpoints/best.pt"


def test_a_killed_run_resumes_at_its_last_checkpoint(
    stack: Stack, s3: Minio, bucket: str, tmp_path: Path
) -> None:
    spec = {**SPEC, "training": {"totalSteps": 40960, "seed": 3, "checkpointEvery": 2048}}
    env, prefix = pod_environment(stack, bucket, tmp_path, spec, "ppo-resume")
    first = run(env)
    latest = prefix + "checkpoints/latest"

    def checkpointed() -> bool:
        return any(o.object_name == latest for o in s3.list_objects(bucket, prefix, True))

    wait_until(checkpointed, timeout_s=120, what="a first checkpoint")
    first.send_signal(signal.SIGKILL)  # a preempted pod: no chance to clean up
    first.wait()
    resp = s3.get_object(bucket, latest)
    reached = int(resp.read().decode().rsplit("step-", 1)[1].removesuffix(".pt"))
    resp.close()
    resp.release_conn()
    assert 0 < reached < 40960

    second = run(env)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    assert f"at step {reached}" in out  # it continued, it did not start over
    assert results(s3, bucket, prefix)["step"] == 40960


def test_a_config_the_trainer_cannot_honour_fails_naming_the_field(
    stack: Stack, s3: Minio, bucket: str, tmp_path: Path
) -> None:
    spec = {**SPEC, "environment": {"id": "highway-fats-v0"}}
    env, prefix = pod_environment(stack, bucket, tmp_path, spec, "typo")
    proc = run(env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    res = results(s3, bucket, prefix)
    assert res["outcome"] == "failed"
    assert res["errorField"] == "spec.environment.id"
    assert "highway-fats-v0" in res["error"]
    assert res["step"] == 0  # it failed at start, before any training


def test_a_sac_run_on_pendulum_checkpoints_its_replay_buffer(
    stack: Stack, s3: Minio, bucket: str, tmp_path: Path
) -> None:
    import torch

    spec = {
        "algorithm": "SAC",
        "environment": {"id": "Pendulum-v1"},
        "hyperparameters": {"learningStarts": 300, "batchSize": 64, "hidden": 64},
        "training": {"totalSteps": 1000, "seed": 1, "checkpointEvery": 500},
        "evaluation": {"episodes": 1},
    }
    env, prefix = pod_environment(stack, bucket, tmp_path, spec, "sac-smoke")
    proc = run(env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    res = results(s3, bucket, prefix)
    assert (res["outcome"], res["step"]) == ("succeeded", 1000)
    assert -2000 < res["scores"]["reward"] <= 0  # Pendulum returns are negative
    local = tmp_path / "ckpt.pt"
    s3.fget_object(bucket, prefix + "checkpoints/step-1000.pt", str(local))
    saved = torch.load(local, weights_only=False)
    assert saved["size"] == 1000  # every transition so far is in the checkpoint
    assert saved["buffer"]["obs"].shape == (1000, 3)


def test_an_algorithm_that_cannot_act_in_the_action_space_fails_at_start(
    stack: Stack, s3: Minio, bucket: str, tmp_path: Path
) -> None:
    spec = {**SPEC, "algorithm": "SAC", "hyperparameters": {}}  # CartPole's actions are discrete
    env, prefix = pod_environment(stack, bucket, tmp_path, spec, "sac-discrete")
    proc = run(env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    res = results(s3, bucket, prefix)
    assert (res["outcome"], res["errorField"]) == ("failed", "spec.algorithm")
    assert "continuous (Box) actions" in res["error"]
