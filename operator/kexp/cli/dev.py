"""``kexp dev``: the local stack of upstream binaries (no Docker needed)."""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import click
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from kexp.dev import toolchain
from kexp.dev.stack import Stack, StackError

_state_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the stack keeps data, logs and credentials "
    "(default: $KEXP_DEV_STATE or ~/.local/state/kexp/dev).",
)


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


def _log(msg: str) -> None:
    click.echo(msg, err=True)


@click.group()
def dev() -> None:
    """Run a local Kubernetes stack with MinIO and Prometheus, from upstream binaries."""


@dev.command()
@click.option("--only", multiple=True, help="Install only these tools (repeatable).")
def install(only: tuple[str, ...]) -> None:
    """Build or install the pinned tools into the cache (a no-op once cached)."""
    try:
        report = toolchain.ensure_tools(only or None, log=_log)
    except toolchain.ToolError as exc:
        _fail(exc)
    versions = toolchain.tool_versions()
    for name, path in sorted(report.paths.items()):
        built = f" (built in {report.built[name]:.0f}s)" if name in report.built else ""
        click.echo(f"{name:<24} {versions[name]:<40} {path}{built}")


@dev.command()
@_state_option
@click.option(
    "--port-base",
    type=click.IntRange(1024, 65000),
    default=None,
    help="First of the consecutive loopback ports the stack uses (default 17400).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for every service to be ready.",
)
def up(state_dir: Path | None, port_base: int | None, timeout_s: float) -> None:
    """Start the stack (idempotent: running services are kept)."""
    stack = Stack(state_dir)
    try:
        report = stack.up(port_base=port_base, timeout_s=timeout_s, log=_log)
    except (StackError, toolchain.ToolError, TimeoutError) as exc:
        _fail(exc)
    started = ", ".join(report.started) or "nothing (all running)"
    click.echo(f"started: {started}")
    click.echo(
        f"API server ready after {report.api_ready_s:.1f}s; all ready after {report.total_s:.1f}s"
    )
    click.echo(f'use it:  eval "$(kexp dev env --state-dir {stack.state_dir})"')


@dev.command()
@_state_option
@click.option("--purge", is_flag=True, help="Also delete the state dir (data, logs, credentials).")
def down(state_dir: Path | None, purge: bool) -> None:
    """Stop every process of the stack (and, with --purge, delete its state)."""
    stack = Stack(state_dir)
    stopped = stack.down(purge=purge)
    click.echo(
        f"stopped {len(stopped)} process(es)" + (f"; removed {stack.state_dir}" if purge else "")
    )


@dev.command()
@_state_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def status(state_dir: Path | None, output: str) -> None:
    """Show each service's pid, port and readiness. Exit 1 unless all are ready."""
    stack = Stack(state_dir)
    try:
        info = stack.status()
    except StackError as exc:
        _fail(exc)
    services = info["services"]
    if output == "json":
        click.echo(json.dumps(info, indent=2))
    elif not services:
        click.echo(f"no stack in {info['stateDir']}; run `kexp dev up`")
    else:
        click.echo(f"{'SERVICE':<26}{'PID':<10}{'PORT':<8}READY")
        for name, svc in services.items():
            pid = svc["pid"] or "-"
            click.echo(f"{name:<26}{pid!s:<10}{svc['port']:<8}{'yes' if svc['ready'] else 'no'}")
    if not services or not all(s["ready"] for s in services.values()):
        sys.exit(1)


@dev.command()
@_state_option
def env(state_dir: Path | None) -> None:
    """Print the exports a shell needs: eval "$(kexp dev env)"."""
    try:
        variables = Stack(state_dir).env()
    except StackError as exc:
        _fail(exc)
    for key, value in variables.items():
        click.echo(f"export {key}={shlex.quote(value)}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dev.command("run-trainer")
@_state_option
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds to wait for the experiment's training Job to appear.",
)
def run_trainer(state_dir: Path | None, name: str, namespace: str, timeout_s: float) -> None:
    """Run experiment NAME's trainer pod as a local process (kwok nodes run no containers).

    Exactly the pod's command, environment, mounted config and S3 credentials; its metrics
    endpoint is scraped by the stack's Prometheus while it runs. Output is shown here and
    kept in the stack's logs/ dir, and is the pod's log for `kubectl logs` and `kexp logs`.
    Exits with the trainer's exit code.
    """
    from datetime import UTC, datetime

    from kexp.dev import cluster
    from kexp.dev.podrunner import run_pod_as_process
    from kexp.kube.client import sync_api_client
    from kexp.render.names import train_job_name
    from kexp.render.training import CONTAINER_NAME

    stack = Stack(state_dir)
    api = sync_api_client(stack.kubeconfig)
    batch = k8s.BatchV1Api(api)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            job = batch.read_namespaced_job(train_job_name(name), namespace)
            break
        except ApiException as exc:
            if exc.status != 404:
                _fail(RuntimeError(f"cannot read Job {train_job_name(name)}: {exc.reason}"))
        if time.monotonic() > deadline:
            _fail(RuntimeError(f"experiment {name!r} has no training Job after {timeout_s:.0f}s"))
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
    core = k8s.CoreV1Api(api)
    job_selector = f"batch.kubernetes.io/job-name={train_job_name(name)}"
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
            _log(
                f"warning: `kubectl logs` will not show this run ({exc.status} {exc.reason}); "
                f"if the stack predates pod logs, `kexp dev down && kexp dev up` fixes that"
            )

    workdir = Path(tempfile.mkdtemp(prefix=f"kexp-{name}-"))
    _log(f"running {name}'s trainer pod as a local process (log {log_path})")
    proc = run_pod_as_process(
        api, namespace, api.sanitize_for_serialization(job), workdir, log_path, port
    )
    try:
        with log_path.open("rb") as log, pod_log_path.open("wb") as pod_log:
            log.seek(offset)
            next_lookup = 0.0
            unterminated = b""
            while True:
                # Pods may come after the Job (and again after a retry): look every second.
                if registering and time.monotonic() >= next_lookup:
                    register_pods()
                    next_lookup = time.monotonic() + 1.0
                # Polled before reading, so output written just before the exit is not lost.
                exited = proc.poll() is not None
                chunk = log.read()
                if chunk:
                    lines, unterminated = cluster.to_cri_log(
                        unterminated + chunk, datetime.now(UTC)
                    )
                    pod_log.write(lines)
                    pod_log.flush()
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
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
    sys.exit(proc.returncode)
