"""Installing kexp's CRDs (generated into ``crds/``) and waiting until they are served."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException


def load_crds(directory: Path) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition in ``directory/*.yaml``."""
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [d for d in docs if d.get("kind") == "CustomResourceDefinition"]


def apply_crds(api: Any, crds: list[dict[str, Any]], *, timeout_s: float = 60.0) -> None:
    """Create or update each CRD, then wait until all are Established."""
    ext = client.ApiextensionsV1Api(api)
    for crd in crds:
        name = crd["metadata"]["name"]
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(name)
            if api.sanitize_for_serialization(current.spec) == crd["spec"]:
                continue  # an unchanged CRD is not rewritten: watchers would see a change
            body = {
                **crd,
                "metadata": {
                    **crd["metadata"],
                    "resourceVersion": current.metadata.resource_version,
                },
            }
            ext.replace_custom_resource_definition(name, body)
    deadline = time.monotonic() + timeout_s
    for crd in crds:
        name = crd["metadata"]["name"]
        while True:
            conditions = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established within {timeout_s:.0f}s")
            time.sleep(0.1)
