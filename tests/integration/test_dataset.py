"""``python -m kexp_trainers.dataset`` against the real MinIO, read back as BC/GAIL read it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from minio import Minio

from kexp.api import contract
from kexp.dev.stack import Stack
from kexp_trainers.runtime.datasets import read_dataset, read_manifest

pytestmark = pytest.mark.stack


def dataset_command(
    args: list[str], env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kexp_trainers.dataset", *args],
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def aws_env(stack: Stack) -> dict[str, str]:
    """Credentials as variables, as after ``eval "$(kexp dev env)"``."""
    creds = stack.s3_credentials()
    return {
        **os.environ,
        contract.S3_ENDPOINT_KEY: creds.endpoint,
        contract.S3_ACCESS_KEY: creds.access_key,
        contract.S3_SECRET_KEY: creds.secret_key,
    }


def secret_files_env(stack: Stack, tmp_path: Path) -> dict[str, str]:
    """Credentials as the files a trainer pod gets, and no AWS_* variables."""
    creds = stack.s3_credentials()
    secret = tmp_path / "s3"
    secret.mkdir()
    for key, value in {
        contract.S3_ENDPOINT_KEY: creds.endpoint,
        contract.S3_ACCESS_KEY: creds.access_key,
        contract.S3_SECRET_KEY: creds.secret_key,
    }.items():
        (secret / key).write_text(value)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, contract.ENV_S3_SECRET_DIR: str(secret)}


def test_cartpole_dataset_round_trip(stack: Stack, s3: Minio, bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/cartpole/expert-v1"
    done = dataset_command(
        ["--env", "CartPole-v1", "--episodes", "3", "--seed", "7", "--out", uri],
        secret_files_env(stack, tmp_path),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "wrote 3 episodes (1500 transitions) of CartPole-v1 by CartPoleExpert" in lines[0]

    data = read_dataset(s3, uri + "/")
    assert data.env_id == "CartPole-v1"
    assert data.episodes == 3
    assert data.transitions == 1500  # the expert holds the pole for all 500 steps
    assert data.obs.shape == (1500, 4)
    assert data.obs.dtype == np.float32
    assert data.actions.shape == (1500,)
    assert data.actions.dtype == np.int64
    assert set(np.unique(data.actions)) <= {0, 1}
    assert data.rewards.shape == data.dones.shape == (1500,)
    assert np.flatnonzero(data.dones).tolist() == [499, 999, 1499]
    assert data.action_space == {"type": "discrete", "n": 2}
    assert data.expert["name"] == "CartPoleExpert"
    assert data.expert["seed"] == 7
    # Classic control has no driving metrics: reward and its spread only.
    assert data.expert_scores == {"episodes": 3.0, "reward": 500.0, "reward_std": 0.0}


def test_highway_dataset_round_trip(stack: Stack, s3: Minio, bucket: str) -> None:
    uri = f"s3://{bucket}/highway/expert-v1/"
    args = ["--env", "highway-fast-v0", "--episodes", "3", "--seed", "0", "--out", uri]
    done = dataset_command([*args, "--config", '{"duration": 10}'], aws_env(stack))
    assert done.returncode == 0, done.stderr
    assert "pdm_score" in done.stdout

    manifest = read_manifest(s3, uri)
    assert manifest["format"] == "kexp-demonstrations/v1"
    assert manifest["obs_shape"] == [25]  # 5 vehicles x 5 features, flattened
    assert manifest["expert"]["env_config"] == {"duration": 10}
    assert "highway-env" in manifest["expert"]["versions"]

    data = read_dataset(s3, uri)
    assert data.episodes == 3
    assert data.obs.shape == (data.transitions, 25)
    assert data.transitions <= 30  # at most 10 policy steps per episode
    assert data.dones[-1]
    assert data.action_space == {"type": "discrete", "n": 5}
    assert set(np.unique(data.actions)) <= set(range(5))
    scores = data.expert_scores
    assert scores["episodes"] == 3.0
    for name in (
        "collision_rate",
        "drivable_area_compliance",
        "ego_progress",
        "ttc_compliance",
        "comfort",
        "pdm_score",
    ):
        assert 0.0 <= scores[name] <= 1.0, name
    assert scores["collision_rate"] == 0.0
    assert scores["pdm_score"] > 0.7
    assert scores["reward"] == pytest.approx(float(data.rewards.sum()) / 3, rel=1e-5)


def test_bucket_is_created(stack: Stack, s3: Minio) -> None:
    name = "t-dataset-new-bucket"
    assert not s3.bucket_exists(name)
    try:
        done = dataset_command(
            ["--env", "Pendulum-v1", "--episodes", "1", "--out", f"s3://{name}/pendulum/"],
            aws_env(stack),
        )
        assert done.returncode == 0, done.stderr
        data = read_dataset(s3, f"s3://{name}/pendulum/")
        assert data.action_space == {"type": "box", "shape": [1]}
        assert data.actions.shape == (200, 1)
        assert data.actions.dtype == np.float32
        assert np.all(np.abs(data.actions) <= 2.0)
    finally:
        for obj in s3.list_objects(name, recursive=True):
            s3.remove_object(name, obj.object_name)
        if s3.bucket_exists(name):
            s3.remove_bucket(name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "no-such-env-v0", "--out", "s3://data/x/"], "--env: 'no-such-env-v0'"),
        (["--env", "Acrobot-v1", "--out", "s3://data/x/"], "no expert for 'Acrobot-v1'"),
        (["--env", "CartPole-v1", "--out", "/tmp/x"], "--out: '/tmp/x' is not an s3:// URI"),
        (["--env", "CartPole-v1", "--out", "s3://No_Such/x"], "--out: 's3://No_Such/x'"),
        (
            ["--env", "highway-fast-v0", "--out", "s3://data/x/", "--config", '{"lanes": 2}'],
            "--config: lanes: not a setting of highway-fast-v0",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    stack: Stack, s3: Minio, args: list[str], message: str
) -> None:
    done = dataset_command(args, aws_env(stack), timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert not s3.bucket_exists("data")  # nothing was written for bad input
