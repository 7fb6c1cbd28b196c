"""The real node: kubelet, containerd and runc run the operator's trainer Job as a container.

A stack of its own (``--real-node`` changes where trainer pods go, so it must not be the
session's stack), its own operator, and the locally built trainer image. The chain checked:
Experiment -> operator -> Job -> MutatingAdmissionPolicy -> the real node -> a runc container
that trains -> checkpoint and results in MinIO -> scraped by Prometheus -> harvested into
status -> its log through the API server from the real kubelet.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kubernetes import client

from kexp.api import contract
from kexp.cli.main import cli
from kexp.dev import cluster, realnode
from kexp.dev.stack import Stack
from kexp.kube.client import sync_api_client
from kexp.storage.s3 import s3_client
from tests.conftest import TEST_PORT_BASE, OperatorProcess
from tests.waiting import wait_until

# A cold first test builds the kubelet, debootstraps, packs and imports a 5.6 GB image.
pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.timeout(1500)]
REPO = Path(__file__).resolve().parents[2]
#: Its own ports, clear of the session stack's (TEST_PORT_BASE .. +21).
PORT_BASE = TEST_PORT_BASE + 50
NS = "real-node-e2e"


@pytest.fixture(scope="module")
def node_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    kept = os.environ.get("KEXP_TEST_REAL_NODE_STATE")
    stack = Stack(Path(kept) if kept else tmp_path_factory.mktemp("real"))
    try:
        report = stack.up(port_base=PORT_BASE, timeout_s=600, real_node=True, log=print)
        assert report.node is not None
        yield stack
    finally:
        # A temporary node's containerd data is about 11 GB: pytest keeps three runs' tmp dirs.
        stack.down(purge=not kept)


@pytest.fixture(scope="module")
def kube(node_stack: Stack) -> Iterator[Any]:
    api = sync_api_client(node_stack.kubeconfig)
    yield api
    api.close()


def test_node_is_real_and_ready(node_stack: Stack, kube: Any) -> None:
    node = client.CoreV1Api(kube).read_node(realnode.NODE_NAME)
    info = node.status.node_info
    assert info.kubelet_version == "v1.34.2"
    assert info.container_runtime_version.startswith("containerd://1.6.")
    assert node.metadata.labels[realnode.NODE_LABEL] == "true"
    assert any(t.key == realnode.NODE_LABEL for t in node.spec.taints or [])
    assert any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def test_a_host_network_pod_runs_in_a_container(node_stack: Stack, kube: Any) -> None:
    core = client.CoreV1Api(kube)
    cluster.ensure_namespace(kube, NS)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hello"},
        "spec": {
            "nodeName": realnode.NODE_NAME,
            "hostNetwork": True,
            "restartPolicy": "Never",
            "tolerations": [{"key": realnode.NODE_LABEL, "operator": "Exists"}],
            "containers": [
                {
                    "name": "hello",
                    "image": "kexp.local/trainer:dev",
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", "import os; print('pid', os.getpid())"],
                }
            ],
        },
    }
    core.create_namespaced_pod(NS, pod)
    done = wait_until(
        lambda: (
            p if (p := core.read_namespaced_pod("hello", NS)).status.phase == "Succeeded" else None
        ),
        timeout_s=120,
        what="the hello pod to succeed",
    )
    assert done.spec.node_name == realnode.NODE_NAME
    # pid 1: its own pid namespace, so a container, not a host process.
    assert core.read_namespaced_pod_log("hello", NS).strip() == "pid 1"


def test_experiment_trains_in_a_container_on_the_real_node(
    node_stack: Stack, kube: Any, tmp_path: Path
) -> None:
    op = _operator(node_stack, kube, tmp_path)
    try:
        _new_smoke_run(node_stack, "rn", "--set", "training.totalSteps=2048")
        started = time.monotonic()
        trained = _run_trainer(node_stack, "rn")
        assert trained.exit_code == 0, trained.output[-3000:]
        assert "runs as a container on the real node" in trained.output
        assert "evaluation over 10 episodes" in trained.output
        core = client.CoreV1Api(kube)
        pods = core.list_namespaced_pod(NS, label_selector="batch.kubernetes.io/job-name=rn-train")
        pod = pods.items[0]
        assert pod.spec.node_name == realnode.NODE_NAME
        assert pod.spec.host_network is True
        status = pod.status.container_statuses[0]
        assert status.image_id.startswith("sha256:") or "kexp.local/trainer" in status.image
        assert status.container_id.startswith("containerd://")
        # Harvested: the scores from results.json in MinIO, the checkpoint's URI.
        exp = wait_until(
            lambda: (
                s
                if (s := _experiment(kube, "rn").get("status", {})).get("phase") == "Succeeded"
                and s.get("results")
                else None
            ),
            timeout_s=120,
            what="rn to be Succeeded and harvested",
        )
        assert exp["checkpoints"]["best"].endswith("/checkpoints/best.pt")
        bucket, _, key = exp["checkpoints"]["best"].removeprefix("s3://").partition("/")
        s3 = s3_client(node_stack.s3_credentials())
        assert (s3.stat_object(bucket, key).size or 0) > 0
        uid = _experiment(kube, "rn")["metadata"]["uid"]
        prefix = contract.s3_prefix(NS, "rn", uid)
        assert (s3.stat_object(bucket, prefix + contract.RESULTS_FILE).size or 0) > 0
        # Scraped: the trainer's metrics, labelled with the pod that served them.
        prom = node_stack.prometheus()
        # Over a range: the target is gone now, so an instant query would find stale series.
        steps = f'max_over_time({contract.METRIC_STEPS}{{pod="{pod.metadata.name}"}}[15m])'
        series = wait_until(
            lambda: prom.query(steps), timeout_s=30, what="the trainer's metrics in Prometheus"
        )
        assert float(series[0]["value"][1]) > 0
        # The log through the API server, from the real kubelet.
        log = core.read_namespaced_pod_log(pod.metadata.name, NS, tail_lines=5)
        assert "evaluation over 10 episodes" in log
        print(f"trained in a container in {time.monotonic() - started:.1f}s")
    finally:
        op.stop()


def test_an_oom_killed_trainer_fails_its_experiment_with_the_reason(
    node_stack: Stack, kube: Any, tmp_path: Path
) -> None:
    """A real cgroup OOM kill, not a simulated one: the kubelet's reason reaches the CLI, the
    Experiment's status and its Events."""
    op = _operator(node_stack, kube, tmp_path)
    try:
        # torch alone needs ~0.4 GB of heap: the trainer is killed while it imports.
        _new_smoke_run(
            node_stack, "rn-oom", "--set", "resources.memory=128Mi", "--set", "retry.backoffLimit=0"
        )
        trained = _run_trainer(node_stack, "rn-oom")
        assert trained.exit_code == 137, trained.output[-3000:]
        assert "exit code 137 (OOMKilled)" in trained.output
        assert "its memory limit is 128Mi (spec.resources.memory)" in trained.output
        failed = wait_until(
            lambda: (
                s
                if (s := _experiment(kube, "rn-oom").get("status", {})).get("phase") == "Failed"
                else None
            ),
            timeout_s=60,
            what="rn-oom to be Failed",
        )
        assert failed["reason"] == "OOMKilled", failed
        assert "exit code 137 (OOMKilled)" in failed["message"]
        core = client.CoreV1Api(kube)
        warning = wait_until(
            lambda: next(
                (
                    e.message
                    for e in core.list_namespaced_event(
                        NS,
                        field_selector="involvedObject.name=rn-oom,involvedObject.kind=Experiment",
                    ).items
                    if (e.type, e.reason) == ("Warning", "OOMKilled")
                ),
                None,
            ),
            timeout_s=30,
            what="an OOMKilled Warning event of rn-oom",
        )
        assert "exit code 137 (OOMKilled)" in warning
    finally:
        op.stop()


def _operator(node_stack: Stack, kube: Any, tmp_path: Path) -> OperatorProcess:
    """CRDs, namespace and S3 Secret in place, and an operator that runs the local trainer
    image on the real node, ready."""
    from kexp.kube.crds import apply_crds, load_crds

    apply_crds(kube, load_crds(REPO / "crds"))
    cluster.ensure_namespace(kube, NS)
    cluster.apply_s3_secret(kube, NS, node_stack.s3_credentials())
    op = OperatorProcess(
        node_stack,
        [NS],
        tmp_path / "operator.log",
        env={"KEXP_TRAINER_IMAGE": "kexp.local/trainer:dev", "KEXP_IMAGE_PULL_POLICY": "Never"},
    )
    try:
        op.wait_ready()
    except BaseException:
        op.stop()
        raise
    return op


def _new_smoke_run(node_stack: Stack, name: str, *sets: str) -> None:
    """Experiment ``name`` from the cartpole-smoke template (submitted first), applied."""
    base = ["--kubeconfig", str(node_stack.kubeconfig), "-n", NS]
    for argv in (
        ["submit", *base, str(REPO / "examples/templates/cartpole-smoke.yaml"), "--no-source"],
        ["new", *base, name, "--no-source", "-t", "cartpole-smoke", *sets, "--apply"],
    ):
        result = CliRunner().invoke(cli, argv, catch_exceptions=False)
        assert result.exit_code == 0, result.output


def _run_trainer(node_stack: Stack, name: str) -> Any:
    """``kexp dev run-trainer``: follows ``name``'s trainer pod on the real node to its end."""
    return CliRunner().invoke(
        cli,
        ["dev", "run-trainer", "--state-dir", str(node_stack.state_dir), "-n", NS, name],
        catch_exceptions=False,
    )


def _experiment(kube: Any, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        "kexp.io", "v1alpha1", NS, "experiments", name
    )
    return obj
