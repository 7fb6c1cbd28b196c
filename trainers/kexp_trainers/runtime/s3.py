"""S3 access for a trainer, from the credentials files the operator mounts (the contract)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kexp.api import contract
from kexp.storage.s3 import S3Credentials


def credentials_from_dir(directory: Path) -> S3Credentials:
    """Credentials from the mounted Secret's files (one file per key of the contract)."""

    def read(key: str, default: str | None = None) -> str:
        path = directory / key
        if path.exists():
            return path.read_text().strip()
        if default is not None:
            return default
        raise FileNotFoundError(f"S3 credentials: {path} is missing (is the Secret mounted?)")

    return S3Credentials(
        endpoint=read(contract.S3_ENDPOINT_KEY),
        access_key=read(contract.S3_ACCESS_KEY),
        secret_key=read(contract.S3_SECRET_KEY),
        region=read(contract.S3_REGION_KEY, "us-east-1"),
    )


def credentials_from_env(env: Mapping[str, str] | None = None) -> S3Credentials:
    """Credentials from ``$KEXP_S3_SECRET_DIR`` (the contract's mount point by default)."""
    env = os.environ if env is None else env
    return credentials_from_dir(Path(env.get(contract.ENV_S3_SECRET_DIR, contract.S3_SECRET_DIR)))
