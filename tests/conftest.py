"""Fixtures shared by every test: the local stack, a namespace and a bucket per test.

They are thin wrappers over ``kexp.dev`` (the code behind ``kexp dev up``), so tests run
against exactly what a developer runs. Under ``CI=true`` a skipped test counts as a failure:
a missing tool must never make the suite pass quietly.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException
from minio import Minio

from kexp.api import contract
from kexp.dev import cluster
from kexp.dev.prometheus import Prometheus
from kexp.dev.stack import Stack, running_stack
from kexp.kube.client import sync_api_client
from kexp.storage.s3 import s3_client

#: Tests use their own ports so they never collide with a developer's `kexp dev up`.
TEST_PORT_BASE = int(os.environ.get("KEXP_TEST_PORT_BASE", "27400"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which counts as a failure: {report.longrepr}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's local stack. Set KEXP_TEST_STATE_DIR to keep and reuse one across runs."""
    reuse = os.environ.get("KEXP_TEST_STATE_DIR")
    state = Path(reuse) if reuse else tmp_path_factory.mktemp("stack")
    with running_stack(state, port_base=TEST_PORT_BASE, keep=bool(reuse)) as s:
        yield s


@pytest.fixture(scope="session")
def kube(stack: Stack) -> Iterator[Any]:
    """A Kubernetes ApiClient for the stack's admin."""
    api = sync_api_client(stack.kubeconfig)
    yield api
    api.close()


def _dns_name(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-")


@pytest.fixture(scope="session")
def namespaces_to_delete(kube: Any) -> Iterator[list[str]]:
    """Test namespaces, deleted when the session ends rather than after each test.

    With namespace globs (``t-*``), kopf starts watchers per namespace and holds its
    handlers until every index has listed; a namespace that is terminating was seen to stall
    the operator for up to a minute. Keeping them until the end avoids that in the suite.
    """
    names: list[str] = []
    yield names
    core = client.CoreV1Api(kube)
    for name in names:
        try:
            core.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def namespace(
    request: pytest.FixtureRequest, kube: Any, stack: Stack, namespaces_to_delete: list[str]
) -> str:
    """A fresh namespace with the S3 Secret and its default ServiceAccount."""
    name = f"t-{_dns_name(request.node.name, 40)}-{secrets.token_hex(3)}"
    core = client.CoreV1Api(kube)
    cluster.ensure_namespace(kube, name)
    cluster.apply_s3_secret(kube, name, stack.s3_credentials())
    deadline = time.monotonic() + 30
    while True:  # the controller manager creates "default"; pods are refused without it
        try:
            core.read_namespaced_service_account("default", name)
            break
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    namespaces_to_delete.append(name)
    return name


@pytest.fixture(scope="session")
def s3(stack: Stack) -> Minio:
    """A MinIO client with the stack's root credentials."""
    return s3_client(stack.s3_credentials())


@pytest.fixture
def bucket(request: pytest.FixtureRequest, s3: Minio) -> Iterator[str]:
    """A fresh, empty bucket; emptied and removed after the test."""
    name = f"t-{_dns_name(request.node.name, 40)}-{secrets.token_hex(3)}"
    s3.make_bucket(name)
    yield name
    for obj in s3.list_objects(name, recursive=True):
        s3.remove_object(name, obj.object_name)
    s3.remove_bucket(name)


@pytest.fixture(scope="session")
def prom(stack: Stack) -> Prometheus:
    """The stack's Prometheus: add scrape targets and run PromQL."""
    return stack.prometheus()


@pytest.fixture(scope="session")
def default_bucket() -> str:
    return contract.DEFAULT_BUCKET


# ---- the operator, as a real process against the stack ------------------------------------
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def crds(kube: Any) -> None:
    """kexp's generated CRDs, installed and Established."""
    from kexp.kube.crds import apply_crds, load_crds

    apply_crds(kube, load_crds(REPO / "crds"))


class OperatorProcess:
    """``kexp-operator`` in a subprocess, watching the given namespace globs."""

    def __init__(
        self, stack: Stack, namespaces: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        import socket
        import subprocess
        import sys

        def free_port() -> int:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                return int(sock.getsockname()[1])

        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.log_path = log_path
        args = [
            sys.executable,
            "-m",
            "kexp.handlers.run",
            f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
        ]
        for ns in namespaces:
            args += ["--namespace", ns]
        if os.environ.get("KEXP_TEST_OPERATOR_VERBOSE"):
            args.append("--verbose")  # kopf's per-event log, for debugging a test
        full_env = {
            **os.environ,
            "KUBECONFIG": str(stack.kubeconfig),
            "KEXP_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "KEXP_OPERATOR_METRICS_ADDR": "127.0.0.1",
            "KEXP_TRAINER_IMAGE": "kexp/trainer:test",
            "KEXP_PROGRESS_INTERVAL_S": "1",  # heartbeats are read every second in tests
            "KEXP_STALL_SECONDS": "30",
            **(env or {}),
        }
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(args, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited {self.proc.returncode}: {self.logs()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"operator not live in {timeout_s}s: {self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def operator(
    stack: Stack,
    crds: None,
    tmp_path_factory: pytest.TempPathFactory,
    namespaces_to_delete: list[str],
) -> Iterator[OperatorProcess]:
    """The session's operator, watching the per-test namespaces (``t-*``)."""
    op = OperatorProcess(stack, ["t-*"], tmp_path_factory.mktemp("operator") / "operator.log")
    try:
        op.wait_ready()
        wait_reconciling(stack, "t-canary-" + secrets.token_hex(3), op, namespaces_to_delete)
        yield op
    finally:
        op.stop()


def wait_reconciling(
    stack: Stack, namespace: str, op: OperatorProcess, to_delete: list[str], timeout_s: float = 60
) -> None:
    """Liveness says the process is up; a canary Experiment's status says it reconciles."""
    api = sync_api_client(stack.kubeconfig)
    cluster.ensure_namespace(api, namespace)
    custom = client.CustomObjectsApi(api)
    canary = {
        "apiVersion": "kexp.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": "canary"},
        "spec": {
            "algorithm": "PPO",
            "environment": {"id": "CartPole-v1"},
            "training": {"totalSteps": 1},
        },
    }
    custom.create_namespaced_custom_object("kexp.io", "v1alpha1", namespace, "experiments", canary)
    deadline = time.monotonic() + timeout_s
    try:
        while (
            not custom.get_namespaced_custom_object(
                "kexp.io", "v1alpha1", namespace, "experiments", "canary"
            )
            .get("status", {})
            .get("phase")
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"operator reconciled nothing in {timeout_s}s: {op.logs()}")
            time.sleep(0.2)
    finally:
        to_delete.append(namespace)
        api.close()
