"""Building Kubernetes API clients from a kubeconfig."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import config


def sync_api_client(kubeconfig: Path | None = None, *, context: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` for the kubeconfig (default: the usual lookup)."""
    return config.new_client_from_config(
        config_file=str(kubeconfig) if kubeconfig else None, context=context
    )
