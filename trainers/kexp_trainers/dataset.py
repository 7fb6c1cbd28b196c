"""Record expert demonstrations into S3: ``python -m kexp_trainers.dataset``.

    python -m kexp_trainers.dataset --env highway-fast-v0 --episodes 50 --seed 0 \\
        --out s3://datasets/highway/expert-v1/ [--config '{"vehicles_count": 30}']

runs the expert of ``--env`` (``kexp_trainers.envs.experts.expert_for``) in the environment
every trainer uses (``kexp_trainers.envs.highway.make_env``, so observations are exactly the
flattened ones the policies see), episode ``i`` reset with seed ``--seed + i``, and writes the
transitions in the format of ``kexp_trainers.runtime.datasets`` (the one BC, GAIL and CIMRL
read) with the expert's own scores over those episodes in the manifest's ``expert_scores``:
reward mean and spread always, and the AD scores (PDM score, collision rate, ...) for
highway-env. The bucket is created if it does not exist.

S3 credentials: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (and
optionally ``AWS_REGION``) when all three are set, e.g. after ``eval "$(kexp dev env)"``;
otherwise the files a trainer pod gets, in ``$KEXP_S3_SECRET_DIR`` (the contract's mount point
by default).

Exit status: 0 written; 2 bad input (unknown env or no expert for it, bad ``--out`` or
``--config``, no credentials), with a one-line error; 1 when S3 fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np
from minio.helpers import check_bucket_name

from kexp.api import contract
from kexp.storage.s3 import S3Credentials, ensure_bucket, s3_client
from kexp_trainers.envs.experts import Expert, expert_for
from kexp_trainers.envs.highway import episode_metrics, make_env
from kexp_trainers.envs.scores import EpisodeMetrics, aggregate
from kexp_trainers.runtime.datasets import DatasetError, Demonstrations, split_uri, write_dataset
from kexp_trainers.runtime.s3 import credentials_from_env


class UsageError(ValueError):
    """Bad input to the command (exit status 2)."""


def credentials(env: Mapping[str, str] | None = None) -> S3Credentials:
    """S3 credentials from AWS_* variables when all are set, else the trainer's secret files."""
    env = os.environ if env is None else env
    keys = (contract.S3_ENDPOINT_KEY, contract.S3_ACCESS_KEY, contract.S3_SECRET_KEY)
    if all(env.get(k) for k in keys):
        return S3Credentials(
            endpoint=env[contract.S3_ENDPOINT_KEY],
            access_key=env[contract.S3_ACCESS_KEY],
            secret_key=env[contract.S3_SECRET_KEY],
            region=env.get(contract.S3_REGION_KEY) or "us-east-1",
        )
    try:
        return credentials_from_env(env)
    except FileNotFoundError as exc:
        raise UsageError(f'{exc}; or set {", ".join(keys)} (e.g. eval "$(kexp dev env)")') from None


def action_space_spec(space: Any) -> dict[str, Any]:
    """The manifest's description of an action space (what ``check_compatible`` compares)."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Discrete):
        return {"type": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box):
        return {"type": "box", "shape": [int(d) for d in space.shape]}
    raise UsageError(f"--env: action space {space} is neither discrete nor a box")


def expert_scores(episodes: Sequence[tuple[float, dict[str, Any]]]) -> dict[str, float]:
    """Scores over the recorded episodes: reward always, the AD scores when the env has them."""
    metrics = [episode_metrics(total, info) for total, info in episodes]
    if metrics and all(m is not None for m in metrics):
        return aggregate([m for m in metrics if m is not None])
    rewards_only = [EpisodeMetrics(total, 1.0, 1.0, 1.0, 1.0, 1.0) for total, _ in episodes]
    scores = aggregate(rewards_only)
    return {k: v for k, v in scores.items() if k in ("episodes", "reward", "reward_std")}


def record(
    env_id: str,
    config: Mapping[str, Any],
    episodes: int,
    seed: int,
    expert: Expert | None = None,
    env: Any = None,
    explore: float = 0.0,
) -> Demonstrations:
    """Run the expert for ``episodes`` episodes (episode i reset with ``seed + i``).

    ``env`` is ``make_env(env_id, config, seed)`` unless given; it is closed at the end.
    With ``explore`` > 0, that share of steps executes a random action while the dataset still
    records the expert's action for the state (noise injection, as in DART): the learner then
    also sees how the expert recovers from states its own mistakes lead to, which plain
    demonstrations never visit. ``expert_scores`` are those of the episodes as recorded.
    """
    if not 0.0 <= explore < 1.0:
        raise ValueError(f"--explore must be in [0, 1), got {explore}")
    rng = np.random.default_rng(seed)
    env = env if env is not None else make_env(env_id, config, seed)
    expert = expert if expert is not None else expert_for(env_id)
    space = action_space_spec(env.action_space)
    obs_rows: list[np.ndarray] = []
    actions: list[Any] = []
    rewards: list[float] = []
    dones: list[bool] = []
    finished: list[tuple[float, dict[str, Any]]] = []
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=seed + episode)
            total, done = 0.0, False
            while not done:
                action = expert.act(env, obs)
                executed = env.action_space.sample() if rng.random() < explore else action
                next_obs, reward, terminated, truncated, info = env.step(executed)
                done = bool(terminated or truncated)
                obs_rows.append(np.asarray(obs, dtype=np.float32))
                actions.append(action)
                rewards.append(float(reward))
                dones.append(done)
                total += float(reward)
                obs = next_obs
            finished.append((total, info))
    finally:
        env.close()
    action_array: np.ndarray
    if space["type"] == "discrete":
        action_array = np.asarray(actions, dtype=np.int64)
    else:
        action_array = np.asarray(actions, dtype=np.float32).reshape(len(actions), *space["shape"])
    return Demonstrations(
        obs=np.stack(obs_rows),
        actions=action_array,
        rewards=np.asarray(rewards, dtype=np.float32),
        dones=np.asarray(dones, dtype=bool),
        env_id=env_id,
        action_space=space,
        expert={
            **expert.describe(),
            "seed": seed,
            "episodes": episodes,
            "env_config": dict(config),
            "explore": explore,
            "versions": _versions(),
        },
        expert_scores=expert_scores(finished),
    )


def _versions() -> dict[str, str]:
    """Versions of what shaped the data, so a dataset can be reproduced."""
    found = {}
    for dist in ("gymnasium", "highway-env", "numpy"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m kexp_trainers.dataset",
        description="Record expert demonstrations into an S3 dataset for BC/GAIL/CIMRL.",
    )
    parser.add_argument("--env", required=True, help="environment id, e.g. highway-fast-v0")
    parser.add_argument("--episodes", type=int, default=50, help="episodes to record")
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset with seed+i")
    parser.add_argument("--out", required=True, help="dataset prefix, s3://bucket/path/")
    parser.add_argument(
        "--config", default="{}", help="environment config as JSON (spec.environment.config)"
    )
    parser.add_argument(
        "--explore",
        type=float,
        default=0.0,
        help="share of steps that execute a random action, still labelled with the expert's "
        "(noise injection: BC then learns to recover; default 0)",
    )
    return parser.parse_args(argv)


def _config(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--config: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"--config: must be a JSON object, got {type(value).__name__}")
    return value


def _cli_message(exc: Exception) -> str:
    """The error in the command's terms: the spec's field names become its options."""
    text = str(exc)
    for field, option in (
        ("spec.environment.id", "--env"),
        ("spec.environment.config.", "--config: "),
        ("spec.environment.config", "--config"),
    ):
        if text.startswith(field):
            return option + text[len(field) :]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Record and upload; 0 on success, 2 on bad input, 1 when S3 fails."""
    args = parse_args(argv)
    try:
        if args.episodes < 1:
            raise UsageError(f"--episodes: must be at least 1, got {args.episodes}")
        if not 0.0 <= args.explore < 1.0:
            raise UsageError(f"--explore: must be in [0, 1), got {args.explore}")
        config = _config(args.config)
        try:
            bucket, prefix = split_uri(args.out)
        except DatasetError as exc:
            raise UsageError(f"--out: {str(exc).split(': ', 1)[-1]}") from None
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError as exc:
            raise UsageError(f"--out: {args.out!r}: {exc}") from None
        uri = f"s3://{bucket}/{prefix}"
        env = make_env(args.env, config, args.seed)  # refuses an unknown id or setting
        expert = expert_for(args.env)
        creds = credentials()
        client = s3_client(creds)
    except (UsageError, ValueError) as exc:
        print(f"error: {_cli_message(exc)}", file=sys.stderr)
        return 2
    try:
        # Before the episodes, so an unreachable store fails in seconds, not after the run.
        ensure_bucket(client, bucket)
    except Exception as exc:
        print(f"error: S3 at {creds.endpoint}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        data = record(args.env, config, args.episodes, args.seed, expert, env, args.explore)
    except (UsageError, ValueError) as exc:
        print(f"error: {_cli_message(exc)}", file=sys.stderr)
        return 2
    try:
        write_dataset(client, uri, data)
    except Exception as exc:
        print(f"error: writing {uri}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    scores = data.expert_scores
    shown = [f"reward {scores['reward']:.2f}±{scores['reward_std']:.2f}"]
    for name in ("pdm_score", "collision_rate"):
        if name in scores:
            shown.append(f"{name} {scores[name]:.3f}")
    print(
        f"wrote {data.episodes} episodes ({data.transitions} transitions) of {args.env} by "
        f"{data.expert.get('name')} to {uri} in {time.monotonic() - started:.1f}s: "
        + ", ".join(shown)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
