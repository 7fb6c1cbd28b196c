"""``kexp dev``: the local stack of upstream binaries (no Docker needed)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

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
@click.option(
    "--real-node",
    is_flag=True,
    help="Also start a real node (containerd, runc, kubelet) that runs kexp's trainer pods "
    "as containers, with the trainer image built locally. Needs root. Remembered: a later "
    "`up` restarts it.",
)
def up(state_dir: Path | None, port_base: int | None, timeout_s: float, real_node: bool) -> None:
    """Start the stack (idempotent: running services are kept)."""
    from kexp.dev.images import ImageError
    from kexp.dev.realnode import NodeError

    stack = Stack(state_dir)
    try:
        report = stack.up(port_base=port_base, timeout_s=timeout_s, log=_log, real_node=real_node)
    except (StackError, toolchain.ToolError, TimeoutError, NodeError, ImageError) as exc:
        _fail(exc)
    started = ", ".join(report.started) or "nothing (all running)"
    click.echo(f"started: {started}")
    click.echo(
        f"API server ready after {report.api_ready_s:.1f}s; all ready after {report.total_s:.1f}s"
    )
    if report.node is not None:
        node = report.node
        click.echo(
            f"real node: tools {node.tools_s:.1f}s, images {node.images_s:.1f}s, "
            f"Ready after {node.ready_s:.1f}s more ({node.total_s:.1f}s in all)"
        )
        for name, what in node.images.items():
            click.echo(f"  {name}: {what}")
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
    """Run experiment NAME's trainer pod: on the real node if the stack has one, else as a
    local process (kwok nodes run no containers).

    On the real node (`kexp dev up --real-node`) the pod is a container; this follows its log
    and has Prometheus scrape it until it ends. Otherwise:

    Exactly the pod's command, environment, mounted config and S3 credentials; its metrics
    endpoint is scraped by the stack's Prometheus while it runs. Output is shown here and
    kept in the stack's logs/ dir, and is the pod's log for `kubectl logs` and `kexp logs`.
    Exits with the trainer's exit code.
    """
    from kexp.dev.podrunner import PodRunError, run_experiment_trainer
    from kexp.dev.realnode import NodeError, follow_trainer_pod

    stack = Stack(state_dir)
    try:
        # A stack with a real node runs the pod as a container: follow it there.
        real = follow_trainer_pod(stack, name, namespace, timeout_s=timeout_s, echo=_echo, log=_log)
    except NodeError as exc:
        _fail(exc)
    if real is not None:
        sys.exit(real)
    try:
        code = run_experiment_trainer(
            stack, name, namespace, timeout_s=timeout_s, echo=_echo, log=_log
        )
    except PodRunError as exc:
        _fail(exc)
    sys.exit(code)


def _echo(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
