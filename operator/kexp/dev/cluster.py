"""What the local cluster needs besides its processes: kubeconfig, kwok stages, nodes, secrets.

Simulated pods follow kexp's kwok stages. By default a Job's pod becomes Running, then
Succeeded at once, as with kwok's own fast stages; annotations on the pod (set in a Job's pod
template) let a test shape that life:

- ``sim.kexp.io/run-for: "5s"`` keeps the pod Running that long before it ends;
- ``sim.kexp.io/exit-code: "137"`` ends it Failed with that exit code, and
  ``sim.kexp.io/reason: "OOMKilled"`` gives the container's termination reason.

kwok also answers for each node's kubelet, so ``kubectl logs`` works: a pod's container log is
whatever file its kwok ``Logs`` object names (``register_pod_logs``), in the CRI log format a
kubelet reads (``to_cri_log`` converts output to it).
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from kubernetes import client
from kubernetes.client.rest import ApiException

from kexp.api import contract
from kexp.kube.client import sync_api_client
from kexp.kube.crds import apply_crds
from kexp.storage.s3 import S3Credentials, ensure_bucket, s3_client

KWOK_NODE_ANNOTATION: Final = "kwok.x-k8s.io/node"
SIM_RUN_FOR: Final = f"{contract.SIM_ANNOTATION_PREFIX}run-for"
SIM_EXIT_CODE: Final = f"{contract.SIM_ANNOTATION_PREFIX}exit-code"
SIM_REASON: Final = f"{contract.SIM_ANNOTATION_PREFIX}reason"

KWOK_GROUP: Final = "kwok.x-k8s.io"
KWOK_VERSION: Final = "v1alpha1"
#: kwok kinds read from the API server (``--enable-crds``) rather than from kwok's config file.
KWOK_ENABLED_CRDS: Final = ("Logs",)

#: kwok v0.7.0's Logs CRD (kustomize/crd/bases/kwok.x-k8s.io_logs.yaml), with the status
#: schema left open: kwok writes no status for Logs, and the spec is all it reads.
LOGS_CRD: Final[dict[str, Any]] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"logs.{KWOK_GROUP}"},
    "spec": {
        "group": KWOK_GROUP,
        "names": {"kind": "Logs", "listKind": "LogsList", "plural": "logs", "singular": "logs"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": KWOK_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "description": "Logs provides logging configuration for a single pod.",
                        "type": "object",
                        "required": ["metadata", "spec"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {
                                "type": "object",
                                "required": ["logs"],
                                "properties": {
                                    "logs": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "containers": {
                                                    "type": "array",
                                                    "items": {"type": "string"},
                                                },
                                                "follow": {"type": "boolean"},
                                                "logsFile": {"type": "string"},
                                                "previousLogsFile": {"type": "string"},
                                            },
                                        },
                                    }
                                },
                            },
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}

#: Simulated nodes: one CPU node and two GPU nodes (two, so multi-node DDP can be placed).
NODES: Final[tuple[dict[str, Any], ...]] = (
    {"name": "kexp-cpu-0", "cpu": "32", "memory": "128Gi", "gpus": 0},
    {"name": "kexp-gpu-0", "cpu": "32", "memory": "256Gi", "gpus": 4},
    {"name": "kexp-gpu-1", "cpu": "32", "memory": "256Gi", "gpus": 4},
)

_CONTAINERS_TERMINATED = """
      {{{{ $now := Now }}}}
      {{{{ $root := . }}}}
      containerStatuses:
      {{{{ range $index, $item := .spec.containers }}}}
      - image: {{{{ $item.image | Quote }}}}
        name: {{{{ $item.name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: {exit_code}
            finishedAt: {{{{ $now | Quote }}}}
            reason: {reason}
            startedAt: {{{{ $root.status.startTime | Quote }}}}
      {{{{ end }}}}
      phase: {phase}
"""

_POD_READY = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.podIP', operator: DoesNotExist}
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        restartCount: 0
        started: true
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" )
        ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
      phase: Running
      startTime: {{ $now | Quote }}
"""


def _end_stage(name: str, *, failed: bool) -> str:
    exit_selector = (
        "    - {key: '.metadata.annotations[\"" + SIM_EXIT_CODE + "\"]', operator: Exists}\n"
        if failed
        else "    - {key: '.metadata.annotations[\"" + SIM_EXIT_CODE + "\"]', "
        "operator: DoesNotExist}\n"
    )
    template = _CONTAINERS_TERMINATED.format(
        exit_code=(
            '{{ index $root.metadata.annotations "' + SIM_EXIT_CODE + '" }}' if failed else "0"
        ),
        reason=(
            '{{ or (index $root.metadata.annotations "' + SIM_REASON + '") "Error" | Quote }}'
            if failed
            else "Completed"
        ),
        phase="Failed" if failed else "Succeeded",
    )
    return (
        "apiVersion: kwok.x-k8s.io/v1alpha1\n"
        "kind: Stage\n"
        f"metadata:\n  name: {name}\n"
        "spec:\n"
        "  resourceRef: {apiGroup: v1, kind: Pod}\n"
        "  selector:\n"
        "    matchExpressions:\n"
        "    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}\n"
        "    - {key: '.status.phase', operator: In, values: [Running]}\n"
        "    - {key: '.metadata.ownerReferences.[].kind', operator: In, values: [Job]}\n"
        f"{exit_selector}"
        "  delay:\n"
        "    durationMilliseconds: 0\n"
        "    durationFrom:\n"
        f"      expressionFrom: '.metadata.annotations[\"{SIM_RUN_FOR}\"]'\n"
        "  next:\n"
        "    statusTemplate: |" + template
    )


_POD_DELETE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: Exists}
  next:
    finalizers: {empty: true}
    delete: true
"""

#: kwok's configuration file: kexp's pod stages (node stages stay kwok's defaults).
KWOK_CONFIG: Final = "\n---\n".join(
    [
        _POD_READY,
        _end_stage("pod-complete", failed=False),
        _end_stage("pod-fail", failed=True),
        _POD_DELETE,
    ]
)


def render_kubeconfig(server: str, ca_cert: Path, token: str) -> dict[str, Any]:
    """A kubeconfig for the local stack's admin (pure)."""
    ca_data = base64.b64encode(ca_cert.read_bytes()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kexp-dev",
                "cluster": {"server": server, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": "kexp-admin", "user": {"token": token}}],
        "contexts": [
            {
                "name": "kexp-dev",
                "context": {"cluster": "kexp-dev", "user": "kexp-admin", "namespace": "default"},
            }
        ],
        "current-context": "kexp-dev",
    }


def render_node(name: str, cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    """A kwok-managed Node with the given capacity (pure)."""
    capacity = {"cpu": cpu, "memory": memory, "pods": "250"}
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
    }
    if gpus:
        capacity[contract.GPU_RESOURCE] = str(gpus)
        labels["nvidia.com/gpu.present"] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def render_s3_secret(name: str, namespace: str, creds: S3Credentials) -> dict[str, Any]:
    """The Secret trainers mount for S3 access; keys from the trainer contract (pure)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "kexp"},
        },
        "type": "Opaque",
        "stringData": {
            contract.S3_ACCESS_KEY: creds.access_key,
            contract.S3_SECRET_KEY: creds.secret_key,
            contract.S3_ENDPOINT_KEY: creds.endpoint,
            contract.S3_REGION_KEY: creds.region,
        },
    }


def _create_or_replace(create: Callable[[], Any], replace: Callable[[], Any]) -> None:
    try:
        create()
    except ApiException as exc:
        if exc.status != 409:
            raise
        replace()


def apply_s3_secret(api: Any, namespace: str, creds: S3Credentials) -> None:
    """Create or update the default S3 Secret in ``namespace``."""
    core = client.CoreV1Api(api)
    body = render_s3_secret(contract.DEFAULT_S3_SECRET, namespace, creds)
    _create_or_replace(
        lambda: core.create_namespaced_secret(namespace, body),
        lambda: core.replace_namespaced_secret(contract.DEFAULT_S3_SECRET, namespace, body),
    )


def ensure_namespace(api: Any, name: str) -> None:
    """Create a namespace unless it exists."""
    core = client.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": name}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def _node_ready(node: Any) -> bool:
    conditions = node.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def bootstrap(
    kubeconfig: Path,
    creds: S3Credentials,
    *,
    deadline: float,
    log: Callable[[str], None] = lambda _m: None,
) -> None:
    """Idempotently create nodes, the kexp namespace, S3 Secrets and the default bucket."""
    api = sync_api_client(kubeconfig)
    try:
        core = client.CoreV1Api(api)
        for spec in NODES:
            body = render_node(spec["name"], spec["cpu"], spec["memory"], spec["gpus"])
            try:
                core.create_node(body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
        for ns in (contract.SYSTEM_NAMESPACE, "default"):
            ensure_namespace(api, ns)
            apply_s3_secret(api, ns, creds)
        ensure_bucket(s3_client(creds), contract.DEFAULT_BUCKET)
        names = {n["name"] for n in NODES}
        while True:
            nodes = core.list_node().items
            ready = {n.metadata.name for n in nodes if _node_ready(n)}
            if names <= ready:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes not Ready in time: {sorted(names - ready)}")
            time.sleep(0.2)
        log(f"nodes ready: {', '.join(sorted(names))}")
    finally:
        api.close()


def install_kwok_crds(kubeconfig: Path, *, deadline: float) -> None:
    """Create or update the CRDs of ``KWOK_ENABLED_CRDS`` and wait until they are served."""
    api = sync_api_client(kubeconfig)
    try:
        apply_crds(api, [LOGS_CRD], timeout_s=max(1.0, deadline - time.monotonic()))
    finally:
        api.close()


def to_cri_log(output: bytes, when: dt.datetime, stream: str = "stdout") -> tuple[bytes, bytes]:
    """The complete lines of ``output`` in the CRI log format, and the unterminated rest (pure).

    A kubelet, and kwok in its place, serves only this format (or Docker's JSON lines):
    ``<RFC 3339 time> <stream> F <text>`` per line. As a container runtime does, a line is
    written once it has ended, so ``tailLines`` counts whole lines: pass the rest back in
    front of the next output, and with a newline added when the output is over.
    """
    stamp = when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
    *lines, rest = output.split(b"\n")
    return b"".join(b"%s %s F %s\n" % (stamp, stream.encode(), line) for line in lines), rest


def register_pod_logs(
    api: Any, namespace: str, pod: str, container: str, log_path: Path, follow: bool = True
) -> None:
    """Serve ``log_path`` as the log of ``pod``'s ``container`` (``kubectl logs``).

    Creates, or updates, the pod's kwok ``Logs`` object: the entry for ``container`` is
    replaced, the other containers' are kept. The file must be in the CRI log format
    (``to_cri_log``) and is read when a client asks, so it may still grow; ``follow`` is
    recorded in the object, while kwok v0.7.0 follows when the request asks (``-f``). The
    object is owned by the pod, so the garbage collector deletes it with the pod.
    Raises ApiException: 404 when the pod does not exist, or when the stack predates the
    Logs CRD (``kexp dev down && kexp dev up`` installs it).
    """
    owner = client.CoreV1Api(api).read_namespaced_pod(pod, namespace)
    custom = client.CustomObjectsApi(api)
    entry = {"containers": [container], "logsFile": str(log_path.absolute()), "follow": follow}
    body: dict[str, Any] = {
        "apiVersion": f"{KWOK_GROUP}/{KWOK_VERSION}",
        "kind": "Logs",
        "metadata": {
            "name": pod,
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": owner.metadata.uid}
            ],
        },
        "spec": {"logs": [entry]},
    }
    args = (KWOK_GROUP, KWOK_VERSION, namespace, "logs")
    while True:
        try:
            custom.create_namespaced_custom_object(*args, body)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
        current = custom.get_namespaced_custom_object(*args, pod)
        kept = []
        for other in current.get("spec", {}).get("logs") or []:
            names = [c for c in other.get("containers") or [] if c != container]
            if names:
                kept.append({**other, "containers": names})
        body["spec"]["logs"] = [*kept, entry]
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            custom.replace_namespaced_custom_object(*args, pod, body)
            return
        except ApiException as exc:
            # 409: changed since it was read; 404: deleted since. Either way, start over.
            if exc.status not in (404, 409):
                raise
        del body["metadata"]["resourceVersion"]
