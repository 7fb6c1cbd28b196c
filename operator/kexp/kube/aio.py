"""The operator's calls to the Kubernetes API, as plain dicts over ``kexp.kube.rest``.

Everything the handlers write goes through here, so no handler blocks the event loop and
every API error is counted in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import kopf

from kexp.api import contract
from kexp.kube.rest import ApiError, Rest, login

GROUP: Final = "kexp.io"
VERSION: Final = "v1alpha1"
EXPERIMENTS: Final = "experiments"
TEMPLATES: Final = "experimenttemplates"
MERGE_PATCH: Final = "application/merge-patch+json"
RAY_GROUP: Final = contract.RAY_GROUP
RAY_VERSION: Final = contract.RAY_VERSION
RAYJOBS: Final = contract.RAYJOB_PLURAL

_COLLECTIONS: Final = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Experiment": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{EXPERIMENTS}",
    # KubeRay's, for sweeps with spec.sweep.rayCluster.
    "RayJob": f"/apis/{RAY_GROUP}/{RAY_VERSION}/namespaces/{{ns}}/{RAYJOBS}",
}


class Conflict(Exception):
    """A write lost an optimistic-concurrency race (HTTP 409): re-read and try again."""


def experiment_path(namespace: str, name: str) -> str:
    return _COLLECTIONS["Experiment"].format(ns=namespace) + f"/{name}"


class Kube:
    """The operator's API calls."""

    def __init__(self, rest: Rest, on_error: Callable[[str], None] | None = None) -> None:
        self.rest = rest
        self._on_error = on_error or (lambda _op: None)

    @classmethod
    def connect(
        cls, settings: kopf.OperatorSettings, on_error: Callable[[str], None] | None = None
    ) -> Kube:
        """A client with the operator's credentials (service account, else kubeconfig)."""
        return cls(Rest(login(settings)), on_error)

    async def close(self) -> None:
        await self.rest.close()

    def _failed(self, operation: str, exc: ApiError) -> None:
        if exc.status not in (404, 409):
            self._on_error(operation)

    async def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.rest.request("GET", experiment_path(namespace, name))
        except ApiError as exc:
            self._failed("get_experiment", exc)
            if exc.status == 404:
                return None
            raise

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.rest.request(
                "GET", _COLLECTIONS["Job"].format(ns=namespace) + f"/{name}"
            )
        except ApiError as exc:
            self._failed("get_job", exc)
            if exc.status == 404:
                return None
            raise

    async def get_ray_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A KubeRay RayJob, or None when it (or KubeRay's API) does not exist."""
        try:
            return await self.rest.request(
                "GET", _COLLECTIONS["RayJob"].format(ns=namespace) + f"/{name}"
            )
        except ApiError as exc:
            self._failed("get_rayjob", exc)
            if exc.status == 404:
                return None
            raise

    async def serves(self, group: str, version: str, plural: str) -> bool:
        """Whether the API server serves ``plural`` in ``group/version`` (a CRD is installed)."""
        try:
            found = await self.rest.request("GET", f"/apis/{group}/{version}")
        except ApiError as exc:
            self._failed("discovery", exc)
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in found.get("resources") or [])

    async def get_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded data, or None if it does not exist. Never logged."""
        import base64

        try:
            secret = await self.rest.request(
                "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}"
            )
        except ApiError as exc:
            self._failed("get_secret", exc)
            if exc.status == 404:
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    async def list_experiments(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        try:
            result = await self.rest.request(
                "GET",
                _COLLECTIONS["Experiment"].format(ns=namespace),
                params={"labelSelector": label_selector},
            )
        except ApiError as exc:
            self._failed("list_experiments", exc)
            raise
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def create_if_absent(self, obj: dict[str, Any]) -> bool:
        """Create ``obj``; True if created now, False if it already existed (409)."""
        kind = obj["kind"]
        path = _COLLECTIONS[kind].format(ns=obj["metadata"]["namespace"])
        try:
            await self.rest.request("POST", path, body=obj)
            return True
        except ApiError as exc:
            self._failed(f"create_{kind.lower()}", exc)
            if exc.status == 409:
                return False
            raise

    async def patch_experiment_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str
    ) -> dict[str, Any]:
        """Merge-patch ``status`` guarded by ``resource_version``; Conflict when it is stale."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": status}
        try:
            return await self.rest.request(
                "PATCH",
                experiment_path(namespace, name) + "/status",
                body=body,
                content_type=MERGE_PATCH,
            )
        except ApiError as exc:
            self._failed("patch_status", exc)
            if exc.status == 409:
                raise Conflict(f"experiment {namespace}/{name} changed meanwhile") from exc
            raise

    async def patch_experiment_labels(
        self, namespace: str, name: str, labels: dict[str, str | None]
    ) -> dict[str, Any]:
        """Merge-patch labels (None removes one); returns the updated Experiment."""
        try:
            return await self.rest.request(
                "PATCH",
                experiment_path(namespace, name),
                body={"metadata": {"labels": labels}},
                content_type=MERGE_PATCH,
            )
        except ApiError as exc:
            self._failed("patch_labels", exc)
            raise
