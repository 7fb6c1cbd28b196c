"""Expert demonstration datasets in S3: the one format BC, GAIL and CIMRL read.

A dataset is a prefix (``spec.expertData``, e.g. ``s3://datasets/highway/expert-v1/``) with

- ``manifest.json``: ``{"format": "kexp-demonstrations/v1", "env_id", "obs_shape",
  "action_space": {"type": "discrete", "n"} | {"type": "box", "shape"}, "transitions",
  "episodes", "shards": [...], "expert": {...}, "expert_scores": {...}}``;
- ``shard-00000.npz`` ...: arrays ``obs`` (float32, ``[N, *obs_shape]``), ``actions`` (int64
  ``[N]`` for discrete, float32 ``[N, *shape]`` for box), ``rewards`` (float32 ``[N]``),
  ``dones`` (bool ``[N]``, True on an episode's last transition).

Shards keep single uploads small and let a reader stream them; the manifest is written last,
so a dataset without one is incomplete and is refused.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from minio import Minio

FORMAT: Final = "kexp-demonstrations/v1"
MANIFEST: Final = "manifest.json"
SHARD_TRANSITIONS: Final = 50_000


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the URI and the problem."""


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/")."""
    if not uri.startswith("s3://"):
        raise DatasetError(f"spec.expertData: {uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise DatasetError(f"spec.expertData: {uri!r} names no bucket")
    return bucket, (prefix.rstrip("/") + "/") if prefix else ""


@dataclass
class Demonstrations:
    """Transitions of an expert, flattened over episodes."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    env_id: str
    action_space: dict[str, Any]
    expert: dict[str, Any] = field(default_factory=dict)
    expert_scores: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.obs)
        for name in ("actions", "rewards", "dones"):
            if len(getattr(self, name)) != n:
                raise DatasetError(f"{name} has {len(getattr(self, name))} rows, obs has {n}")

    @property
    def transitions(self) -> int:
        return len(self.obs)

    @property
    def episodes(self) -> int:
        return int(np.count_nonzero(self.dones))


def write_dataset(client: Minio, uri: str, data: Demonstrations) -> dict[str, Any]:
    """Upload shards, then the manifest (last, so a half-written dataset is never read)."""
    bucket, prefix = split_uri(uri)
    shards = []
    for i, start in enumerate(range(0, max(data.transitions, 1), SHARD_TRANSITIONS)):
        end = min(start + SHARD_TRANSITIONS, data.transitions)
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            obs=data.obs[start:end].astype(np.float32),
            actions=data.actions[start:end],
            rewards=data.rewards[start:end].astype(np.float32),
            dones=data.dones[start:end].astype(bool),
        )
        name = f"shard-{i:05d}.npz"
        payload = buf.getvalue()
        client.put_object(bucket, prefix + name, io.BytesIO(payload), len(payload))
        shards.append(name)
    manifest = {
        "format": FORMAT,
        "env_id": data.env_id,
        "obs_shape": list(data.obs.shape[1:]),
        "action_space": data.action_space,
        "transitions": data.transitions,
        "episodes": data.episodes,
        "shards": shards,
        "expert": data.expert,
        "expert_scores": data.expert_scores,
    }
    body = json.dumps(manifest, indent=2).encode()
    client.put_object(bucket, prefix + MANIFEST, io.BytesIO(body), len(body))
    return manifest


def _get(client: Minio, bucket: str, key: str, uri: str) -> bytes:
    from minio.error import S3Error

    try:
        resp = client.get_object(bucket, key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket"):
            raise DatasetError(
                f"spec.expertData: {uri} has no {key.rsplit('/', 1)[-1]} "
                "(generate one with `python -m kexp_trainers.dataset`)"
            ) from None
        raise
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()


def read_manifest(client: Minio, uri: str) -> dict[str, Any]:
    """The dataset's manifest, checked for its format."""
    bucket, prefix = split_uri(uri)
    raw = _get(client, bucket, prefix + MANIFEST, uri)
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        raise DatasetError(f"spec.expertData: {uri}{MANIFEST} is not JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise DatasetError(
            f"spec.expertData: {uri}{MANIFEST} has format {manifest.get('format')!r}, "
            f"expected {FORMAT!r}"
        )
    return manifest


def read_dataset(client: Minio, uri: str, limit: int | None = None) -> Demonstrations:
    """All (or the first ``limit``) transitions of the dataset at ``uri``."""
    bucket, prefix = split_uri(uri)
    manifest = read_manifest(client, uri)
    parts: dict[str, list[np.ndarray]] = {"obs": [], "actions": [], "rewards": [], "dones": []}
    have = 0
    for name in manifest.get("shards") or []:
        with np.load(io.BytesIO(_get(client, bucket, prefix + name, uri))) as shard:
            for key, chunks in parts.items():
                chunks.append(shard[key])
        have += len(parts["obs"][-1])
        if limit is not None and have >= limit:
            break
    if not have:
        raise DatasetError(f"spec.expertData: {uri} holds no transitions")
    arrays = {k: np.concatenate(v)[:limit] for k, v in parts.items()}
    return Demonstrations(
        obs=arrays["obs"],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        dones=arrays["dones"],
        env_id=str(manifest.get("env_id")),
        action_space=dict(manifest.get("action_space") or {}),
        expert=dict(manifest.get("expert") or {}),
        expert_scores={k: float(v) for k, v in (manifest.get("expert_scores") or {}).items()},
    )


def check_compatible(
    data: Demonstrations, env_id: str, obs_shape: tuple[int, ...], action_space: Mapping[str, Any]
) -> None:
    """Refuse a dataset recorded on another environment or action space (names the field)."""
    if data.env_id != env_id:
        raise DatasetError(
            f"spec.expertData: recorded on {data.env_id!r}, but spec.environment.id is {env_id!r}"
        )
    if tuple(data.obs.shape[1:]) != tuple(obs_shape):
        raise DatasetError(
            f"spec.expertData: observations of shape {list(data.obs.shape[1:])}, the "
            f"environment gives {list(obs_shape)} (spec.environment.config differs?)"
        )
    if dict(data.action_space) != dict(action_space):
        raise DatasetError(
            f"spec.expertData: action space {data.action_space}, the environment has "
            f"{dict(action_space)}"
        )
