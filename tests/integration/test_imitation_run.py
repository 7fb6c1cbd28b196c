"""BC, GAIL and CIMRL as the pod runs them: rendered config, real MinIO, real torchrun.

The expert is scripted (CartPole: push towards where the pole is falling, a mean return of
500), its demonstrations written with the dataset module the trainers read them with.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from minio import Minio

from kexp.dev.podrunner import expand_container_refs
from kexp.dev.stack import Stack
from kexp.render.resolved import ResolvedExperiment
from kexp.render.settings import RenderSettings
from kexp.render.training import render_train_job
from kexp_trainers.runtime.datasets import Demonstrations, write_dataset
from tests.integration.test_trainer_run import pod_environment, results, run
from tests.waiting import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.slow]

CARTPOLE_EXPERT_REWARD = 500.0


def cartpole_expert(obs: np.ndarray) -> int:
    """Push the cart towards where the pole is falling."""
    return 1 if obs[2] + 0.5 * obs[3] > 0 else 0


def pendulum_expert(obs: np.ndarray) -> np.ndarray:
    """A PD controller towards upright (good enough to have something to clone)."""
    cos, sin, velocity = obs
    return np.clip([-(2.0 * np.arctan2(sin, cos) + 0.5 * velocity)], -2.0, 2.0).astype(np.float32)


def record(env_id: str, policy: Any, episodes: int) -> Demonstrations:
    """``episodes`` of ``policy`` on ``env_id``, in the dataset's layout."""
    env = gym.make(env_id)
    obs_list, actions, rewards, dones, returns = [], [], [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        done, total = False, 0.0
        while not done:
            action = policy(obs)
            obs_list.append(obs)
            actions.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            done = bool(terminated or truncated)
            rewards.append(reward)
            dones.append(done)
            total += float(reward)
        returns.append(total)
    space = env.action_space
    discrete = isinstance(space, gym.spaces.Discrete)
    return Demonstrations(
        obs=np.asarray(obs_list, np.float32),
        actions=np.asarray(actions, np.int64 if discrete else np.float32),
        rewards=np.asarray(rewards, np.float32),
        dones=np.asarray(dones, bool),
        env_id=env_id,
        action_space={"type": "discrete", "n": int(space.n)}
        if discrete
        else {"type": "box", "shape": list(space.shape)},
        expert={"kind": "scripted"},
        expert_scores={"reward": float(np.mean(returns)), "episodes": float(episodes)},
    )


@pytest.fixture
def cartpole_data(s3: Minio, bucket: str) -> str:
    """s3:// URI of 10 scripted CartPole episodes (5,000 transitions)."""
    data = record("CartPole-v1", cartpole_expert, 10)
    assert data.expert_scores["reward"] == CARTPOLE_EXPERT_REWARD
    uri = f"s3://{bucket}/datasets/cartpole/expert-v1/"
    write_dataset(s3, uri, data)
    return uri


def bc_spec(data: str, **training: Any) -> dict[str, Any]:
    return {
        "algorithm": "BC",
        "environment": {"id": "CartPole-v1"},
        "expertData": data,
        "hyperparameters": {"learningRate": 3.0e-3, "batchSize": 256},
        "training": {"totalSteps": 102_400, "seed": 1, "checkpointEvery": 25_600, **training},
        "evaluation": {"episodes": 10},
    }


def metrics_rows(s3: Minio, bucket: str, prefix: str) -> list[dict[str, str]]:
    resp = s3.get_object(bucket, prefix + "metrics.csv")
    try:
        return list(csv.DictReader(io.StringIO(resp.read().decode())))
    finally:
        resp.close()
        resp.release_conn()


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def object_names(s3: Minio, bucket: str, prefix: str) -> set[str]:
    return {o.object_name.removeprefix(prefix) for o in s3.list_objects(bucket, prefix, True)}


def test_bc_clones_the_cartpole_expert(
    stack: Stack, s3: Minio, bucket: str, cartpole_data: str, tmp_path: Path
) -> None:
    env, prefix = pod_environment(stack, bucket, tmp_path, bc_spec(cartpole_data), "bc")
    out = finish(run(env))
    res = results(s3, bucket, prefix)
    assert (res["outcome"], res["step"]) == ("succeeded", 102_400), out
    # The bar: at least 80% of the expert's return, greedy, over 10 episodes.
    assert res["scores"]["reward"] >= 0.8 * CARTPOLE_EXPERT_REWARD, out
    rows = metrics_rows(s3, bucket, prefix)
    assert float(rows[-1]["bc_loss"]) < float(rows[0]["bc_loss"])
    assert float(rows[-1]["val_accuracy"]) > 0.9
    assert {"checkpoints/step-102400.pt", "checkpoints/best.pt", "results.json"} <= (
        object_names(s3, bucket, prefix)
    )
    print(f"BC reward {res['scores']['reward']} vs expert {CARTPOLE_EXPERT_REWARD}")


def test_bc_on_continuous_actions_regresses_the_expert(
    stack: Stack, s3: Minio, bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{bucket}/datasets/pendulum/pd-v1/"
    write_dataset(s3, uri, record("Pendulum-v1", pendulum_expert, 5))
    spec = {
        "algorithm": "BC",
        "environment": {"id": "Pendulum-v1"},
        "expertData": uri,
        "hyperparameters": {"batchSize": 64, "validationFraction": 0.2},
        "training": {"totalSteps": 32_000, "seed": 1, "checkpointEvery": 16_000},
        "evaluation": {"episodes": 2},
    }
    env, prefix = pod_environment(stack, bucket, tmp_path, spec, "bc-pendulum")
    finish(run(env))
    res = results(s3, bucket, prefix)
    assert (res["outcome"], res["step"]) == ("succeeded", 32_000)
    rows = metrics_rows(s3, bucket, prefix)
    assert float(rows[-1]["val_loss"]) < 0.5 * float(rows[0]["val_loss"])
    assert "accuracy" not in rows[0]  # a regression has no accuracy to report


def test_a_killed_bc_run_resumes_at_its_checkpoint(
    stack: Stack, s3: Minio, bucket: str, cartpole_data: str, tmp_path: Path
) -> None:
    total = 1_024_000
    spec = bc_spec(cartpole_data, totalSteps=total, checkpointEvery=51_200)
    env, prefix = pod_environment(stack, bucket, tmp_path, spec, "bc-resume")
    first = run(env)
    latest = prefix + "checkpoints/latest"
    wait_until(
        lambda: latest in {o.object_name for o in s3.list_objects(bucket, prefix, True)},
        timeout_s=120,
        what="a first checkpoint",
    )
    first.send_signal(signal.SIGKILL)
    first.wait()
    resp = s3.get_object(bucket, latest)
    reached = int(resp.read().decode().rsplit("step-", 1)[1].removesuffix(".pt"))
    resp.close()
    resp.release_conn()
    assert 0 < reached < total

    out = finish(run(env))
    assert f"at step {reached}" in out  # it continued, it did not start over
    res = results(s3, bucket, prefix)
    assert (res["outcome"], res["step"]) == ("succeeded", total)
    rows = metrics_rows(s3, bucket, prefix)
    # The resumed attempt's history starts after the checkpoint it resumed from.
    assert reached < int(rows[0]["step"]) <= reached + 10 * 256


def test_bc_trains_data_parallel_under_torchrun_and_only_rank_0_writes(
    stack: Stack, s3: Minio, bucket: str, cartpole_data: str, tmp_path: Path
) -> None:
    from minio.versioningconfig import ENABLED, VersioningConfig

    # With versioning, every write of a key is kept: a second writer could not hide.
    s3.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
    try:
        _check_data_parallel_run(stack, s3, bucket, cartpole_data, tmp_path)
    finally:
        # The bucket fixture removes objects, not their old versions.
        for obj in s3.list_objects(bucket, recursive=True, include_version=True):
            s3.remove_object(bucket, obj.object_name, version_id=obj.version_id)


def _check_data_parallel_run(
    stack: Stack, s3: Minio, bucket: str, cartpole_data: str, tmp_path: Path
) -> None:
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    env, prefix = pod_environment(stack, bucket, ddp_dir, bc_spec(cartpole_data), "bc-ddp")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "kexp_trainers.run",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = finish(proc)
    for rank in (0, 1):
        assert f"[rank {rank}/2] joined the process group (gloo, 2 processes)" in out
    assert "[rank 1/2] trained to step 102400; rank 0 evaluates and reports" in out
    res = results(s3, bucket, prefix)
    assert (res["outcome"], res["step"]) == ("succeeded", 102_400)
    assert res["scores"]["reward"] >= 0.8 * CARTPOLE_EXPERT_REWARD, out
    versions: dict[str, int] = {}
    for obj in s3.list_objects(bucket, prefix, recursive=True, include_version=True):
        name = obj.object_name.removeprefix(prefix)
        versions[name] = versions.get(name, 0) + 1
    assert versions["results.json"] == 1
    assert versions["metrics.csv"] == 1
    steps = [n for n in versions if n.startswith("checkpoints/step-")]
    assert sorted(steps) == sorted(
        f"checkpoints/step-{s}.pt" for s in (25_600, 51_200, 76_800, 102_400)
    )
    assert all(versions[n] == 1 for n in steps), versions
    # One history: every step once, in order.
    logged = [int(r["step"]) for r in metrics_rows(s3, bucket, prefix)]
    assert logged == sorted(set(logged))

    # Each rank's half-batches make up the one-process run's batches, and DDP averages their
    # gradients: the same spec on one process learns the same weights, up to rounding.
    env, single_prefix = pod_environment(
        stack, bucket, single_dir, bc_spec(cartpole_data), "bc-single"
    )
    finish(run(env))
    actors = []
    for where in (prefix, single_prefix):
        local = tmp_path / f"{len(actors)}.pt"
        s3.fget_object(bucket, where + "checkpoints/step-102400.pt", str(local))
        weights = torch.load(local, weights_only=False)["agent"]
        actors.append({k: v for k, v in weights.items() if k.startswith("actor.")})
    for name, value in actors[0].items():
        assert torch.allclose(value, actors[1][name], atol=1e-5), name
    print(f"DDP BC reward {res['scores']['reward']}, same weights as one process")


def test_bc_trains_on_two_nodes_with_the_command_the_operator_renders(
    stack: Stack, s3: Minio, bucket: str, cartpole_data: str, tmp_path: Path
) -> None:
    """Each process runs what one pod of the two-node Indexed Job runs: the rendered torchrun
    command and env, expanded as the kubelet does, with the index the Job controller gives.

    The one substitution: ``MASTER_ADDR`` names pod 0 through the headless Service, which needs
    cluster DNS; here both "nodes" share this host, so it becomes 127.0.0.1 (and a free port).
    """
    spec = bc_spec(cartpole_data, totalSteps=25_600, checkpointEvery=25_600)
    spec["resources"] = {"nodes": 2}
    env, prefix = pod_environment(stack, bucket, tmp_path, spec, "bc-two-nodes")
    exp = ResolvedExperiment(
        "bc-two-nodes", "research", "uid-bc-two-nodes", {**spec, "storage": {"bucket": bucket}}
    )
    job = render_train_job(exp, RenderSettings())
    assert job["spec"]["completionMode"] == "Indexed"
    container = job["spec"]["template"]["spec"]["containers"][0]
    argv = [*container["command"], *container.get("args", [])]
    assert argv[0] == "torchrun", argv
    assert env["MASTER_ADDR"].startswith("bc-two-nodes-train-0."), env["MASTER_ADDR"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    procs = []
    for index in (0, 1):
        pod_env = env | {"JOB_COMPLETION_INDEX": str(index)}
        command = [torchrun, *(expand_container_refs(a, pod_env) for a in argv[1:])]
        assert not any("$(" in a for a in command), command
        procs.append(
            subprocess.Popen(
                command, env=pod_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outs = [finish(p) for p in procs]
    assert "[rank 0/2] joined the process group (gloo, 2 processes)" in outs[0], outs[0]
    assert "[rank 1/2] joined the process group (gloo, 2 processes)" in outs[1], outs[1]
    assert "[rank 1/2] trained to step 25600; rank 0 evaluates and reports" in outs[1]
    res = results(s3, bucket, prefix)
    assert (res["outcome"], res["step"]) == ("succeeded", 25_600), outs
    assert "checkpoints/step-25600.pt" in object_names(s3, bucket, prefix)


def test_gail_smoke_run_writes_checkpoints_and_results(
    stack: Stack, s3: Minio, bucket: str, cartpole_data: str, tmp_path: Path
) -> None:
    spec = {
        "algorithm": "GAIL",
        "environment": {"id": "CartPole-v1", "numEnvs": 4},
        "expertData": cartpole_data,
        "hyperparameters": {"nSteps": 128, "batchSize": 128, "discriminatorLearningRate": 3e-4},
        "training": {"totalSteps": 8192, "seed": 2, "checkpointEvery": 4096},
        "evaluation": {"episodes": 3},
    }
    env, prefix = pod_environment(stack, bucket, tmp_path, spec, "gail")
    finish(run(env))
    res = results(s3, bucket, prefix)
    assert (res["outcome"], res["step"]) == ("succeeded", 8192)
    assert res["scores"]["reward"] > 0
    rows = metrics_rows(s3, bucket, prefix)
    assert {"disc_loss", "disc_accuracy", "gail_reward", "policy_loss"} <= set(rows[-1])
    assert float(rows[-1]["gail_reward"]) > 0  # -log(1 - D) is positive
    local = tmp_path / "gail.pt"
    s3.fget_object(bucket, prefix + "checkpoints/step-8192.pt", str(local))
    saved = torch.load(local, weights_only=False)
    assert {"agent", "discriminator", "disc_optimizer"} <= set(saved)
    print(f"GAIL smoke: reward {res['scores']['reward']}, last row {rows[-1]}")


def test_cimrl_fine_tunes_from_the_bc_checkpoint(
    stack: Stack, s3: Minio, bucket: str, cartpole_data: str, tmp_path: Path
) -> None:
    bc_dir, rl_dir = tmp_path / "bc", tmp_path / "rl"
    bc_dir.mkdir()
    rl_dir.mkdir()
    env, bc_prefix = pod_environment(stack, bucket, bc_dir, bc_spec(cartpole_data), "cimrl-bc")
    finish(run(env))
    bc_reward = results(s3, bucket, bc_prefix)["scores"]["reward"]

    spec = {
        "algorithm": "CIMRL",
        "environment": {"id": "CartPole-v1", "numEnvs": 4},
        "expertData": cartpole_data,
        "hyperparameters": {"learningRate": 1e-4, "nSteps": 128, "batchSize": 128},
        "training": {"totalSteps": 4096, "seed": 1, "checkpointEvery": 2048},
        "evaluation": {"episodes": 10},
    }
    env, prefix = pod_environment(stack, bucket, rl_dir, spec, "cimrl-rl")
    env["KEXP_INIT_CHECKPOINT"] = f"s3://{bucket}/{bc_prefix}checkpoints/best.pt"
    out = finish(run(env))
    assert "warm-started from" in out
    rows = metrics_rows(s3, bucket, prefix)
    # Evaluated before any training, on the same seeds as BC's evaluation: BC's own policy.
    assert (rows[0]["step"], float(rows[0]["init_reward"])) == ("0", pytest.approx(bc_reward))
    assert float(rows[1]["bc_weight"]) < 0.1  # annealing from bcWeight's default 0.1
    res = results(s3, bucket, prefix)
    assert (res["outcome"], res["step"]) == ("succeeded", 4096)
    assert res["scores"]["reward"] >= 0.8 * CARTPOLE_EXPERT_REWARD, out
    print(f"CIMRL: init {rows[0]['init_reward']} (BC {bc_reward}), after {res['scores']}")


def test_cimrl_without_an_init_checkpoint_fails_naming_init_from(
    stack: Stack, s3: Minio, bucket: str, cartpole_data: str, tmp_path: Path
) -> None:
    spec = {**bc_spec(cartpole_data), "algorithm": "CIMRL", "hyperparameters": {}}
    env, prefix = pod_environment(stack, bucket, tmp_path, spec, "cimrl-alone")
    env.pop("KEXP_INIT_CHECKPOINT", None)
    proc = run(env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    res = results(s3, bucket, prefix)
    assert (res["outcome"], res["errorField"], res["step"]) == ("failed", "spec.initFrom", 0)
    assert "KEXP_INIT_CHECKPOINT" in res["error"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no-expert-data", "required for BC"),
        ("missing-dataset", "has no manifest.json"),
        ("other-environment", "recorded on 'CartPole-v1'"),
    ],
)
def test_bc_without_usable_expert_data_fails_naming_expert_data(
    stack: Stack,
    s3: Minio,
    bucket: str,
    cartpole_data: str,
    tmp_path: Path,
    case: str,
    expected: str,
) -> None:
    spec = bc_spec(cartpole_data)
    if case == "no-expert-data":
        del spec["expertData"]
    elif case == "missing-dataset":
        spec["expertData"] = f"s3://{bucket}/datasets/nothing-here/"
    else:
        spec["environment"] = {"id": "Acrobot-v1"}
    env, prefix = pod_environment(stack, bucket, tmp_path, spec, f"bc-{case}")
    proc = run(env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    res = results(s3, bucket, prefix)
    assert (res["outcome"], res["errorField"], res["step"]) == ("failed", "spec.expertData", 0)
    assert expected in res["error"]


def test_torchrun_is_refused_for_algorithms_that_do_not_train_data_parallel(
    stack: Stack, s3: Minio, bucket: str, cartpole_data: str, tmp_path: Path
) -> None:
    spec = {**bc_spec(cartpole_data), "algorithm": "GAIL", "hyperparameters": {}}
    env, prefix = pod_environment(stack, bucket, tmp_path, spec, "gail-ddp")
    env.update({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    proc = run({**os.environ, **env})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert results(s3, bucket, prefix)["errorField"] == "spec.resources.nodes"
