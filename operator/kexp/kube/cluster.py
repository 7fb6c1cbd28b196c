"""The CLI's calls to the Kubernetes API: plain dicts in, plain dicts out, one error type.

Built on the official client's ``ApiClient`` for kubeconfig handling (contexts, exec and
token auth, TLS), but responses are read as raw JSON: listing thousands of Experiments stays
fast because nothing is turned into model objects.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

GROUP: Final = "kexp.io"
VERSION: Final = "v1alpha1"
_KEXP: Final = f"/apis/{GROUP}/{VERSION}"

#: Collection paths by kind, for what the CLI reads and (dry-run) creates.
COLLECTIONS: Final = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Secret": ("/api/v1", "secrets"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Experiment": (_KEXP, "experiments"),
    "ExperimentTemplate": (_KEXP, "experimenttemplates"),
}


IN_CLUSTER_NAMESPACE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class ClusterError(Exception):
    """A failed API call, with the server's own message (one line)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def collection_path(kind: str, namespace: str | None) -> str:
    """``/api[s]/.../namespaces/<ns>/<plural>``, or the all-namespaces path when ns is None."""
    try:
        prefix, plural = COLLECTIONS[kind]
    except KeyError:
        raise ClusterError(f"kexp does not handle objects of kind {kind!r}") from None
    if namespace is None:
        return f"{prefix}/{plural}"
    return f"{prefix}/namespaces/{quote(namespace)}/{plural}"


class Cluster:
    """One kubeconfig context's API server, and the namespace it defaults to."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    @classmethod
    def connect(cls, kubeconfig: Path | None = None, context: str | None = None) -> Cluster:
        """The current (or named) context of the kubeconfig, or in-cluster credentials."""
        path = str(kubeconfig) if kubeconfig else None
        try:
            api = config.new_client_from_config(config_file=path, context=context)
            contexts, active = config.list_kube_config_contexts(config_file=path)
            if context:
                active = next((c for c in contexts if c["name"] == context), active)
            namespace = (active.get("context") or {}).get("namespace") or "default"
        except (ConfigException, OSError, TypeError) as exc:
            # Inside a pod (e.g. a CI job or a notebook on the cluster) there is no kubeconfig.
            try:
                config.load_incluster_config()
            except ConfigException:
                raise ClusterError(f"no usable kubeconfig: {exc}") from None
            api = client.ApiClient()
            namespace = Path(IN_CLUSTER_NAMESPACE).read_text()
        return cls(api, namespace.strip())

    # ---- raw requests -------------------------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Any:
        """The raw urllib3 response of one call; ClusterError for an HTTP error status."""
        _, url, headers, _, _ = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": accept, "Content-Type": content_type},
            auth_settings=["BearerToken"],
        )
        try:
            resp = self.api.call_api(method, url, header_params=headers, body=body).response
        except ApiException as exc:
            host = self.api.configuration.host
            raise ClusterError(f"cannot reach the API server at {host}: {exc.reason}") from None
        except Exception as exc:  # urllib3 errors beyond the client's own wrapping
            host = self.api.configuration.host
            raise ClusterError(f"cannot reach the API server at {host}: {exc}") from None
        if resp.status >= 400:
            data = resp.data
            resp.release_conn()
            try:
                message = json.loads(data).get("message") or resp.reason
            except (ValueError, AttributeError):
                message = (data or b"").decode("utf-8", errors="replace").strip() or resp.reason
            raise ClusterError(str(message), resp.status)
        return resp

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API call; the decoded JSON response. Raises ClusterError with the message."""
        resp = self._send(method, path, body=body, query=query, content_type=content_type)
        data = resp.data
        resp.release_conn()
        return json.loads(data) if data else None

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.request("GET", path)
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    # ---- Experiments and templates ------------------------------------------------------
    def list_objects(
        self, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Every object of ``kind`` (in all namespaces when ``namespace`` is None), paged."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = [("limit", "500")]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if token:
                query.append(("continue", token))
            page = self.request("GET", collection_path(kind, namespace), query=query)
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None when it does not exist."""
        return self._get_or_none(f"{collection_path(kind, namespace)}/{quote(name)}")

    def create(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Create ``obj`` (server-side dry run: validated and defaulted, not stored)."""
        namespace = obj.get("metadata", {}).get("namespace") or self.namespace
        query = [("dryRun", "All")] if dry_run else []
        query.append(("fieldManager", "kexp-cli"))
        result: dict[str, Any] = self.request(
            "POST", collection_path(obj["kind"], namespace), body=obj, query=query
        )
        return result

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch an Experiment's status subresource."""
        path = f"{collection_path('Experiment', namespace)}/{quote(name)}/status"
        result: dict[str, Any] = self.request(
            "PATCH",
            path,
            body=patch,
            query=[("fieldManager", "kexp-cli")],
            content_type="application/merge-patch+json",
        )
        return result

    def secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's decoded data, or None when it does not exist."""
        secret = self.get("Secret", namespace, name)
        if secret is None:
            return None
        return {
            key: base64.b64decode(value).decode()
            for key, value in (secret.get("data") or {}).items()
        }

    # ---- logs ---------------------------------------------------------------------------
    def pod_log(
        self, namespace: str, pod: str, *, tail: int | None = None, follow: bool = False
    ) -> Iterator[bytes]:
        """A pod's log (its first container), streamed in chunks."""
        query = [("follow", "true" if follow else "false")]
        if tail is not None:
            query.append(("tailLines", str(tail)))
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log"
        resp = self._send("GET", path, query=query, accept="*/*")
        try:
            yield from resp.stream(4096)
        finally:
            resp.release_conn()
