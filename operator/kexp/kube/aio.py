"""The operator's async Kubernetes client: the few calls it makes, as plain dicts.

Everything the handlers read or write goes through here, so no handler blocks the event loop
and every API error is counted in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

GROUP = "kexp.io"
VERSION = "v1alpha1"
EXPERIMENTS = "experiments"
TEMPLATES = "experimenttemplates"


class Conflict(Exception):
    """A write lost an optimistic-concurrency race (HTTP 409): re-read and try again."""


async def connect(kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient from the in-cluster service account, else the kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        await config.load_kube_config(config_file=kubeconfig)
    return client.ApiClient()


class Kube:
    """Typed-at-the-edges wrapper over kubernetes_asyncio for the operator's calls."""

    def __init__(self, api: client.ApiClient, on_error: Callable[[str], None] | None = None):
        self.api = api
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self._on_error = on_error or (lambda _op: None)

    async def close(self) -> None:
        await self.api.close()

    def _plain(self, obj: Any) -> dict[str, Any]:
        data: dict[str, Any] = self.api.sanitize_for_serialization(obj)
        return data

    def _failed(self, operation: str, exc: ApiException) -> None:
        if exc.status not in (404, 409):
            self._on_error(operation)

    # ---- reads ---------------------------------------------------------------------------
    async def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, EXPERIMENTS, name
            )
            return obj
        except ApiException as exc:
            self._failed("get_experiment", exc)
            if exc.status == 404:
                return None
            raise

    async def get_template(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, TEMPLATES, name
            )
            return obj
        except ApiException as exc:
            self._failed("get_template", exc)
            if exc.status == 404:
                return None
            raise

    async def list_experiments(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        try:
            result = await self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, EXPERIMENTS, label_selector=label_selector
            )
        except ApiException as exc:
            self._failed("list_experiments", exc)
            raise
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(await self.batch.read_namespaced_job(name, namespace))
        except ApiException as exc:
            self._failed("get_job", exc)
            if exc.status == 404:
                return None
            raise

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        try:
            pods = await self.core.list_namespaced_pod(namespace, label_selector=label_selector)
        except ApiException as exc:
            self._failed("list_pods", exc)
            raise
        return [self._plain(p) for p in pods.items]

    async def secret_exists(self, namespace: str, name: str) -> bool:
        """Whether a Secret exists; only metadata matters, the data is never looked at."""
        try:
            await self.core.read_namespaced_secret(name, namespace)
            return True
        except ApiException as exc:
            self._failed("get_secret", exc)
            if exc.status == 404:
                return False
            raise

    # ---- writes --------------------------------------------------------------------------
    async def create_if_absent(self, obj: dict[str, Any]) -> bool:
        """Create ``obj``; True if created now, False if it already existed (409)."""
        kind = obj["kind"]
        ns = obj["metadata"]["namespace"]
        creators = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "Service": self.core.create_namespaced_service,
            "Job": self.batch.create_namespaced_job,
        }
        try:
            await creators[kind](ns, obj)
            return True
        except ApiException as exc:
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
            obj: dict[str, Any] = await self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                EXPERIMENTS,
                name,
                body,
                _content_type="application/merge-patch+json",
            )
            return obj
        except ApiException as exc:
            self._failed("patch_status", exc)
            if exc.status == 409:
                raise Conflict(f"experiment {namespace}/{name} changed meanwhile") from exc
            raise

    async def patch_experiment_labels(
        self, namespace: str, name: str, labels: dict[str, str | None]
    ) -> str:
        """Merge-patch labels (None removes one); returns the new resourceVersion."""
        try:
            obj: dict[str, Any] = await self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                EXPERIMENTS,
                name,
                {"metadata": {"labels": labels}},
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            self._failed("patch_labels", exc)
            raise
        return str(obj["metadata"]["resourceVersion"])
