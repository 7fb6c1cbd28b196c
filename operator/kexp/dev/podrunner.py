"""Run a Job's trainer pod as a local process, for stacks whose nodes cannot run containers.

kwok's nodes simulate pods; to still run the real training, this takes the Job's pod template
(command, arguments, environment), the ConfigMap and Secret it mounts, writes the mounted
files into a work dir, and starts the same command as a process on this machine. The only
differences from the pod are the file locations ($KEXP_CONFIG and $KEXP_S3_SECRET_DIR point at
the copies) and the Python interpreter (this one, where kexp's trainers are installed).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kexp.api import contract
from kexp.dev import cluster
from kexp.kube.client import sync_api_client
from kexp.render.names import sweep_name, train_job_name
from kexp.render.training import CONTAINER_NAME

if TYPE_CHECKING:
    from kexp.dev.stack import Stack


def _volume_source(pod: dict[str, Any], mount_path: str) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    name = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == mount_path)
    return next(v for v in pod["spec"]["volumes"] if v["name"] == name)


_CONTAINER_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_container_refs(arg: str, env: dict[str, str]) -> str:
    """``$(VAR)`` in a container's command or args as the kubelet expands it: a defined
    variable's value, ``$$`` an escaped ``$``, an undefined reference left as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _CONTAINER_REF.sub(one, arg)


def pod_process_args(
    api: Any, namespace: str, job: dict[str, Any], workdir: Path, metrics_port: int = 0
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run ``job``'s trainer here (pure, apart from reading)."""
    core = client.CoreV1Api(api)
    template = job["spec"]["template"]
    container = template["spec"]["containers"][0]
    config_dir = workdir / "config"
    secret_dir = workdir / "s3"
    config_dir.mkdir(parents=True, exist_ok=True)
    secret_dir.mkdir(parents=True, exist_ok=True)
    cm_name = _volume_source(template, contract.CONFIG_DIR)["configMap"]["name"]
    for key, value in (core.read_namespaced_config_map(cm_name, namespace).data or {}).items():
        (config_dir / key).write_text(value)
    secret_name = _volume_source(template, contract.S3_SECRET_DIR)["secret"]["secretName"]
    import base64

    secret = core.read_namespaced_secret(secret_name, namespace)
    for key, value in (secret.data or {}).items():
        path = secret_dir / key
        path.write_bytes(base64.b64decode(value))
        path.chmod(0o600)
    env = {e["name"]: e.get("value", "") for e in container.get("env") or []}
    env[contract.ENV_CONFIG] = str(config_dir / contract.CONFIG_FILE)
    env[contract.ENV_S3_SECRET_DIR] = str(secret_dir)
    # Several local runs must not fight over :9090: each gets its own port, or none (0).
    env[contract.ENV_METRICS_PORT] = str(metrics_port)
    # The kubelet expands $(VAR) from the container's own env (a multi-node run's torchrun
    # arguments); the file locations above are this machine's, not the pod's.
    argv = [
        expand_container_refs(a, env)
        for a in (*container.get("command", []), *container.get("args", []))
    ]
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    return argv, env


def run_pod_as_process(
    api: Any,
    namespace: str,
    job: dict[str, Any],
    workdir: Path,
    log_path: Path,
    metrics_port: int = 0,
) -> subprocess.Popen[bytes]:
    """Start the Job's trainer as a local process, its output going to ``log_path``."""
    argv, env = pod_process_args(api, namespace, job, workdir, metrics_port)
    log = log_path.open("ab")
    return subprocess.Popen(
        argv,
        env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )


def end_simulated_pods(api: Any, namespace: str, job_name: str, exit_code: int) -> int:
    """End the kwok-simulated pods of ``job_name`` the way the local process ended.

    The simulated pod otherwise lives as long as its ``sim.kexp.io/run-for`` annotation
    says; this sets it to 0s (and the exit code, when the process failed), and kwok, which
    re-reads a pod's annotations on every change, ends the pod at once. Returns how many
    running pods it ended.
    """
    core = client.CoreV1Api(api)
    annotations = {cluster.SIM_RUN_FOR: "0s"}
    if exit_code != 0:
        annotations[cluster.SIM_EXIT_CODE] = str(exit_code)
    ended = 0
    selector = f"batch.kubernetes.io/job-name={job_name}"
    for pod in core.list_namespaced_pod(namespace, label_selector=selector).items:
        if pod.status.phase in ("Succeeded", "Failed") or pod.metadata.deletion_timestamp:
            continue
        patch = {"metadata": {"annotations": annotations}}
        core.patch_namespaced_pod(pod.metadata.name, namespace, patch)
        ended += 1
    return ended


class PodRunError(RuntimeError):
    """The experiment's trainer pod could not be started here; the message says why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_experiment_trainer(
    stack: Stack,
    name: str,
    namespace: str,
    *,
    timeout_s: float,
    echo: Callable[[bytes], None],
    log: Callable[[str], None],
) -> int:
    """Run experiment ``name``'s trainer pod as a local process; its exit code.

    Waits up to ``timeout_s`` for the training Job. While the trainer runs, the stack's
    Prometheus scrapes its metrics port, its output goes to ``echo`` and the stack's logs/
    dir, and a CRI-format copy is registered as the pod's log so that ``kubectl logs`` and
    ``kexp logs`` show it through the API server.
    """
    api = sync_api_client(stack.kubeconfig)
    batch = client.BatchV1Api(api)
    deadline = time.monotonic() + timeout_s
    job: Any = None
    while job is None:
        # A training Job, or the Job of a one-pod sweep: the same contract, another command.
        for job_name in (train_job_name(name), sweep_name(name)):
            try:
                job = batch.read_namespaced_job(job_name, namespace)
                break
            except ApiException as exc:
                if exc.status != 404:
                    raise PodRunError(f"cannot read Job {job_name}: {exc.reason}") from None
        if job is None:
            if time.monotonic() > deadline:
                raise PodRunError(
                    f"experiment {name!r} has no training or sweep Job after {timeout_s:.0f}s"
                )
            time.sleep(0.5)
    port = _free_port()
    target = f"trainer-{namespace}-{name}"
    prom = stack.prometheus()
    prom.add_target(target, f"127.0.0.1:{port}", {"namespace": namespace})
    log_path = stack.state_dir / "logs" / f"{target}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    # The API server reads pod logs through kwok, which serves only the CRI log format: this
    # run's output is copied there as it comes, and each pod of the Job is pointed at it.
    pod_log_path = stack.state_dir / "logs" / "pods" / f"{target}.log"
    pod_log_path.parent.mkdir(parents=True, exist_ok=True)
    core = client.CoreV1Api(api)
    job_selector = f"batch.kubernetes.io/job-name={job.metadata.name}"
    registered: set[str] = set()
    registering = True

    def register_pods() -> None:
        nonlocal registering
        try:
            for pod in core.list_namespaced_pod(namespace, label_selector=job_selector).items:
                if pod.metadata.name in registered or pod.metadata.deletion_timestamp:
                    continue
                cluster.register_pod_logs(
                    api, namespace, pod.metadata.name, CONTAINER_NAME, pod_log_path
                )
                registered.add(pod.metadata.name)
        except ApiException as exc:
            registering = False
            log(
                f"warning: `kubectl logs` will not show this run ({exc.status} {exc.reason}); "
                f"if the stack predates pod logs, `kexp dev down && kexp dev up` fixes that"
            )

    workdir = Path(tempfile.mkdtemp(prefix=f"kexp-{name}-"))
    log(f"running {name}'s trainer pod as a local process (log {log_path})")
    proc = run_pod_as_process(
        api, namespace, api.sanitize_for_serialization(job), workdir, log_path, port
    )
    try:
        with log_path.open("rb") as out, pod_log_path.open("wb") as pod_log:
            out.seek(offset)
            next_lookup = 0.0
            unterminated = b""
            while True:
                # Pods may come after the Job (and again after a retry): look every second.
                if registering and time.monotonic() >= next_lookup:
                    register_pods()
                    next_lookup = time.monotonic() + 1.0
                # Polled before reading, so output written just before the exit is not lost.
                exited = proc.poll() is not None
                chunk = out.read()
                if chunk:
                    lines, unterminated = cluster.to_cri_log(
                        unterminated + chunk, datetime.now(UTC)
                    )
                    pod_log.write(lines)
                    pod_log.flush()
                    echo(chunk)
                elif exited:
                    if unterminated:
                        pod_log.write(
                            cluster.to_cri_log(unterminated + b"\n", datetime.now(UTC))[0]
                        )
                    break
                else:
                    time.sleep(0.2)
        # A short run can end before the job controller has made its pod.
        settle = time.monotonic() + 10.0
        while registering:
            register_pods()
            if registered or time.monotonic() > settle:
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.terminate()
        prom.remove_target(target)
        shutil.rmtree(workdir, ignore_errors=True)
    return int(proc.returncode)
