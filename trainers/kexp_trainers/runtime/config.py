"""The run's configuration: the ExperimentConfig the operator mounts at ``$KEXP_CONFIG``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kexp.api import contract
from kexp.api.validation import validate_spec


class ConfigError(ValueError):
    """The config cannot be run; ``field`` names the spec field at fault when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class RunConfig:
    """One run: who it is, what to train (the resolved spec) and where to write."""

    name: str
    namespace: str
    uid: str
    spec: dict[str, Any]
    bucket: str
    prefix: str
    init_checkpoint: str | None = None

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.spec.get("hyperparameters") or {})

    @property
    def seed(self) -> int:
        return int((self.spec.get("training") or {}).get("seed", 0))

    @property
    def total_steps(self) -> int:
        return int(self.spec["training"]["totalSteps"])


def parse_config(document: Mapping[str, Any]) -> RunConfig:
    """Validate an ExperimentConfig document (what the operator renders) into a RunConfig."""
    if document.get("kind") != "ExperimentConfig":
        raise ConfigError(f"expected kind ExperimentConfig, got {document.get('kind')!r}")
    meta = document.get("metadata") or {}
    storage = document.get("storage") or {}
    try:
        spec = validate_spec(document.get("spec") or {})
    except ValueError as exc:
        message = str(exc)
        field = message.split(":", 1)[0] if message.startswith("spec.") else None
        raise ConfigError(message, field) from exc
    missing = [k for k in ("name", "namespace", "uid") if not meta.get(k)]
    if missing:
        raise ConfigError(f"metadata.{missing[0]} is missing from the config")
    return RunConfig(
        name=str(meta["name"]),
        namespace=str(meta["namespace"]),
        uid=str(meta["uid"]),
        spec=spec,
        bucket=str(storage.get("bucket") or contract.DEFAULT_BUCKET),
        prefix=str(
            storage.get("prefix")
            or contract.s3_prefix(meta["namespace"], meta["name"], meta["uid"])
        ),
        init_checkpoint=document.get("initCheckpoint"),
    )


def load_config(env: Mapping[str, str] | None = None) -> RunConfig:
    """Read and validate ``$KEXP_CONFIG`` (the contract's mount path by default)."""
    env = os.environ if env is None else env
    path = Path(env.get(contract.ENV_CONFIG, contract.CONFIG_PATH))
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"no config at {path} (is ${contract.ENV_CONFIG} set?)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"config {path} is not a mapping")
    return parse_config(document)
