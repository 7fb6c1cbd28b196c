"""Pod logs go through the API server to kwok, which serves each node's kubelet endpoints.

`kubectl logs` on the local stack is the real path: the API server dials the node's kubelet
port over TLS (checking kwok's certificate against the stack's CA), and kwok answers with the
file the pod's kwok ``Logs`` object names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kexp.api import contract
from kexp.dev import cluster
from kexp.dev.stack import Stack
from kexp.render.names import config_map_name, train_job_name
from tests.waiting import wait_until

pytestmark = pytest.mark.stack


def write_cri_log(path: Path, text: str) -> None:
    lines, rest = cluster.to_cri_log(text.encode(), datetime.now(UTC))
    assert rest == b""
    with path.open("ab") as fh:
        fh.write(lines)


def running_pod(kube: Any, namespace: str, name: str, containers: list[str]) -> None:
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {"containers": [{"name": c, "image": "busybox:1.36"} for c in containers]},
        },
    )

    def running() -> bool:
        pod = core.read_namespaced_pod(name, namespace)
        return bool(pod.spec.node_name and pod.status.phase == "Running")

    wait_until(running, what=f"pod {name} Running on a kwok node")


def read_log(kube: Any, namespace: str, pod: str, **kwargs: Any) -> str | None:
    """The pod's log, or None while kwok has not yet seen its Logs object."""
    try:
        return str(client.CoreV1Api(kube).read_namespaced_pod_log(pod, namespace, **kwargs))
    except ApiException as exc:
        if exc.status == 400 and "no logs found" in (exc.body or ""):
            return None
        raise


def test_to_cri_log_writes_whole_lines_and_hands_back_the_rest() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    lines, rest = cluster.to_cri_log(b"one\ntwo\nthr", when)
    assert lines == (
        b"2026-01-02T03:04:05.678901Z stdout F one\n2026-01-02T03:04:05.678901Z stdout F two\n"
    )
    assert rest == b"thr"
    assert cluster.to_cri_log(rest + b"ee\n", when, "stderr") == (
        b"2026-01-02T03:04:05.678901Z stderr F three\n",
        b"",
    )
    assert cluster.to_cri_log(b"", when) == (b"", b"")


def test_registered_file_is_the_pods_log_through_the_api_server(
    stack: Stack, kube: Any, namespace: str, tmp_path: Path
) -> None:
    running_pod(kube, namespace, "talker", ["trainer"])
    log = tmp_path / "talker.log"
    lines = [f"step {i} reward {i * 1.5}" for i in range(5)]
    write_cri_log(log, "\n".join(lines) + "\n")

    cluster.register_pod_logs(kube, namespace, "talker", "trainer", log)

    full = wait_until(
        lambda: read_log(kube, namespace, "talker", container="trainer"), what="pod log"
    )
    assert full.splitlines() == lines
    tail = read_log(kube, namespace, "talker", container="trainer", tail_lines=2)
    assert tail is not None
    assert tail.splitlines() == lines[-2:]

    # The file is read on each request: what the process writes later shows up.
    write_cri_log(log, "one more\n")
    assert read_log(kube, namespace, "talker", tail_lines=1) == "one more\n"

    # kubectl, as a developer runs it, takes the same path.
    kubectl = subprocess.run(
        [str(stack.bin_dir / "kubectl"), "logs", "talker", "-n", namespace, "--tail=3"],
        env={**os.environ, "KUBECONFIG": str(stack.kubeconfig)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert kubectl.stdout.splitlines() == [*lines[-2:], "one more"]


def test_registering_again_replaces_only_that_containers_file(
    kube: Any, namespace: str, tmp_path: Path
) -> None:
    running_pod(kube, namespace, "pair", ["trainer", "sidecar"])
    first, second, sidecar = (tmp_path / f"{n}.log" for n in ("first", "second", "sidecar"))
    write_cri_log(first, "first run\n")
    write_cri_log(second, "second run\n")
    write_cri_log(sidecar, "sidecar says hi\n")

    cluster.register_pod_logs(kube, namespace, "pair", "trainer", first)
    cluster.register_pod_logs(kube, namespace, "pair", "sidecar", sidecar)
    wait_until(lambda: read_log(kube, namespace, "pair", container="sidecar"), what="sidecar log")
    cluster.register_pod_logs(kube, namespace, "pair", "trainer", second)

    wait_until(
        lambda: read_log(kube, namespace, "pair", container="trainer") == "second run\n",
        what="trainer log to come from the second file",
    )
    assert read_log(kube, namespace, "pair", container="sidecar") == "sidecar says hi\n"
    logs = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        cluster.KWOK_GROUP, cluster.KWOK_VERSION, namespace, "logs", "pair"
    )
    assert logs["metadata"]["ownerReferences"][0]["kind"] == "Pod"


def test_run_trainer_output_is_the_trainer_pods_log(
    stack: Stack, kube: Any, namespace: str
) -> None:
    experiment = "local"
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": config_map_name(experiment)}, "data": {"config.yaml": "{}\n"}},
    )
    # The last line has no newline: it must still reach the log, as a line of its own.
    script = (
        "import sys\n"
        "for i in range(3):\n"
        "    print(f'epoch {i}', flush=True)\n"
        "sys.stdout.write('done')\n"
        "sys.exit(3)\n"
    )
    job = {
        "metadata": {"name": train_job_name(experiment)},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {cluster.SIM_RUN_FOR: "60s"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "kexp/trainer:test",
                            "command": ["python", "-c", script],
                            "volumeMounts": [
                                {"name": "config", "mountPath": contract.CONFIG_DIR},
                                {"name": "s3", "mountPath": contract.S3_SECRET_DIR},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "config", "configMap": {"name": config_map_name(experiment)}},
                        {"name": "s3", "secret": {"secretName": contract.DEFAULT_S3_SECRET}},
                    ],
                },
            },
        },
    }
    client.BatchV1Api(kube).create_namespaced_job(namespace, job)

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "kexp.cli.main",
            "dev",
            "run-trainer",
            experiment,
            "-n",
            namespace,
            "--state-dir",
            str(stack.state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 3, run.stderr
    assert run.stdout == "epoch 0\nepoch 1\nepoch 2\ndone"

    selector = f"batch.kubernetes.io/job-name={train_job_name(experiment)}"
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    assert len(pods) == 1
    pod = pods[0].metadata.name
    log = wait_until(
        lambda: read_log(kube, namespace, pod, container="trainer"), what="trainer pod log"
    )
    assert log == "epoch 0\nepoch 1\nepoch 2\ndone\n"
