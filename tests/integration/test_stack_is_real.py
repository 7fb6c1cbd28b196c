"""The local stack is the real thing: controllers, garbage collection, CEL, S3, Prometheus, RBAC."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from minio import Minio
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kexp.api import contract
from kexp.dev import cluster
from kexp.dev.prometheus import Prometheus
from kexp.dev.stack import Stack
from kexp.kube.crds import apply_crds
from tests.waiting import wait_until

pytestmark = pytest.mark.stack
T = TypeVar("T")


def job_body(
    name: str, *, annotations: dict[str, str] | None = None, gpus: int = 0
) -> dict[str, Any]:
    resources = {"limits": {contract.GPU_RESOURCE: str(gpus)}} if gpus else {}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": "busybox:1.36", "resources": resources}
                    ],
                },
            },
        },
    }


def job_condition(batch: Any, name: str, namespace: str) -> str | None:
    job = batch.read_namespaced_job(name, namespace)
    for cond in job.status.conditions or []:
        if cond.status == "True" and cond.type in ("Complete", "Failed"):
            return str(cond.type)
    return None


def test_job_gets_its_pod_from_the_job_controller_and_completes(kube: Any, namespace: str) -> None:
    batch = client.BatchV1Api(kube)
    core = client.CoreV1Api(kube)
    batch.create_namespaced_job(namespace, job_body("hello"))

    result = wait_until(lambda: job_condition(batch, "hello", namespace), what="Job to finish")
    assert result == "Complete"
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=hello").items
    assert len(pods) == 1
    pod = pods[0]
    # Created by the job controller, placed by the scheduler on a kwok node, run by kwok.
    assert pod.metadata.owner_references[0].kind == "Job"
    assert pod.spec.node_name in {n["name"] for n in cluster.NODES}
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0


def test_simulated_pod_can_run_for_a_while_and_fail_with_a_reason(
    kube: Any, namespace: str
) -> None:
    batch = client.BatchV1Api(kube)
    core = client.CoreV1Api(kube)
    annotations = {
        cluster.SIM_RUN_FOR: "2s",
        cluster.SIM_EXIT_CODE: "137",
        cluster.SIM_REASON: "OOMKilled",
    }
    batch.create_namespaced_job(namespace, job_body("oom", annotations=annotations))

    def running_pod() -> Any:
        pods = core.list_namespaced_pod(namespace, label_selector="job-name=oom").items
        return pods[0] if pods and pods[0].status.phase == "Running" else None

    wait_until(running_pod, what="pod Running")
    assert job_condition(batch, "oom", namespace) is None  # still running: it was told 2 s
    assert wait_until(lambda: job_condition(batch, "oom", namespace), what="Job end") == "Failed"
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=oom").items[0]
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


def test_gpu_pod_is_scheduled_on_a_node_advertising_nvidia_gpus(kube: Any, namespace: str) -> None:
    batch = client.BatchV1Api(kube)
    core = client.CoreV1Api(kube)
    batch.create_namespaced_job(namespace, job_body("gpu", gpus=2))
    assert wait_until(lambda: job_condition(batch, "gpu", namespace), what="GPU Job") == "Complete"
    pod = core.list_namespaced_pod(namespace, label_selector="job-name=gpu").items[0]
    node = core.read_node(pod.spec.node_name)
    assert int(node.status.allocatable[contract.GPU_RESOURCE]) >= 2


def test_deleting_an_owner_garbage_collects_its_dependents(kube: Any, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
        "blockOwnerDeletion": True,
    }
    for i in range(3):
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": f"dep-{i}", "ownerReferences": [ref]}}
        )
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})

    core.delete_namespaced_config_map("owner", namespace)

    def remaining() -> set[str] | None:
        names = {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}
        return names if not any(n.startswith("dep-") for n in names) else None

    names = wait_until(remaining, what="dependents to be collected")
    assert "bystander" in names


CEL_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.celtest.kexp.io"},
    "spec": {
        "group": "celtest.kexp.io",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "low": {"type": "number"},
                                    "high": {"type": "number"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.low < self.high",
                                        "message": "low must be below high",
                                        "fieldPath": ".low",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_cel_rule_rejects_a_violating_object_with_its_message(
    kube: Any, namespace: str
) -> None:
    apply_crds(kube, [CEL_CRD])  # creates it and waits until it is Established
    custom = client.CustomObjectsApi(kube)

    def create(low: float, high: float) -> Any:
        body = {
            "apiVersion": "celtest.kexp.io/v1",
            "kind": "Widget",
            "metadata": {"name": f"w-{int(low)}-{int(high)}"},
            "spec": {"low": low, "high": high},
        }
        # A new CRD can take a moment before its resource is served.
        deadline = time.monotonic() + 15
        while True:
            try:
                return custom.create_namespaced_custom_object(
                    "celtest.kexp.io", "v1", namespace, "widgets", body
                )
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    assert create(1, 2)["spec"] == {"low": 1, "high": 2}
    with pytest.raises(ApiException) as err:
        create(5, 3)
    assert err.value.status == 422
    assert "spec.low: Invalid value" in err.value.body
    assert "low must be below high" in err.value.body


def test_object_written_to_minio_reads_back_byte_identical(s3: Minio, bucket: str) -> None:
    # 12 MiB with a part size of 5 MiB makes the SDK use a multipart upload.
    data = os.urandom(12 * 1024 * 1024)
    s3.put_object(bucket, "nested/dir/blob.bin", io.BytesIO(data), len(data), part_size=5 * 2**20)
    resp = s3.get_object(bucket, "nested/dir/blob.bin")
    try:
        back = resp.read()
    finally:
        resp.close()
        resp.release_conn()
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(back) == len(data)


def test_default_bucket_and_s3_secret_exist(stack: Stack, s3: Minio, kube: Any) -> None:
    assert s3.bucket_exists(contract.DEFAULT_BUCKET)
    secret = client.CoreV1Api(kube).read_namespaced_secret(
        contract.DEFAULT_S3_SECRET, contract.SYSTEM_NAMESPACE
    )
    assert set(secret.data) == set(contract.S3_SECRET_KEYS)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_prometheus_scrapes_a_prometheus_client_endpoint(prom: Prometheus) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("kexp_test_answer", "A value exported for the scrape test", registry=registry)
    gauge.set(42.5)
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom.add_target("scrape-test", f"127.0.0.1:{port}", {"suite": "stack"})
        result = prom.wait_for('kexp_test_answer{job="scrape-test",suite="stack"}', timeout_s=30)
        assert float(result[0]["value"][1]) == 42.5
    finally:
        prom.remove_target("scrape-test")
        server.shutdown()
        thread.join(timeout=5)


def test_rbac_is_enforced_for_service_account_tokens(
    stack: Stack, kube: Any, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token

    cfg = client.Configuration()
    cfg.host = stack.api_url()
    cfg.ssl_ca_cert = str(stack.pki.ca_cert)
    cfg.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(cfg) as as_sa:
        sa_core = client.CoreV1Api(as_sa)
        with pytest.raises(ApiException) as err:
            sa_core.list_namespaced_secret(namespace)
        assert err.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in err.value.body

        rbac = client.RbacAuthorizationV1Api(kube)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "cm-reader"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "cm-reader"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "cm-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        )
        # A ConfigMap of our own: kube-root-ca.crt is published by the controller manager in its
        # own time, and on a loaded machine the grant could work before it exists.
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "granted"}})
        listed = wait_until(
            lambda: _try(lambda: sa_core.list_namespaced_config_map(namespace)),
            what="RBAC grant to take effect",
        )
        assert any(cm.metadata.name == "granted" for cm in listed.items)


def _try(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except ApiException:
        return None
