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


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube: Any, stack: Stack) -> Iterator[str]:
    """A fresh namespace with the S3 Secret and its default ServiceAccount; deleted after."""
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
    yield name
    core.delete_namespace(name)


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
