"""``kexp harvest``, ``report``, ``plot`` and ``logs``: one run's files and output."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

import click

from kexp.analysis.curves import Curves, CurvesError, main_curve, parse_metrics
from kexp.analysis.report import render_report
from kexp.api import contract
from kexp.cli.common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    Session,
    cluster_options,
    fail,
    fmt,
    render_table,
    write_new_file,
)
from kexp.cli.fetch import S3_ERRORS, RunStore, get_experiment, resolved, run_store, s3_error
from kexp.kube.cluster import ClusterError
from kexp.render.names import child_labels, train_job_name
from kexp.status.harvest import harvest_patch, results_csv_spec
from kexp.storage.runfiles import read_results, read_text


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _job_outcome(session: Session, exp: dict[str, Any]) -> bool:
    """Whether the run succeeded, from its Job (or the recorded phase once it is gone);
    fails while the run is still going."""
    meta = exp["metadata"]
    phase = (exp.get("status") or {}).get("phase") or "Pending"
    job = session.cluster.get("Job", meta["namespace"], train_job_name(meta["name"]))
    if job is None:
        if phase in ("Succeeded", "Failed"):
            return phase == "Succeeded"
        fail(f"experiment {meta['name']!r} has no training Job yet (phase {phase})")
    conditions = (job.get("status") or {}).get("conditions") or []
    ended = {c.get("type") for c in conditions if c.get("status") == "True"}
    if not ended & {"Complete", "Failed"}:
        fail(
            f"experiment {meta['name']!r} is still {phase}: results are harvested when its Job ends"
        )
    return "Complete" in ended


@click.command()
@cluster_options
@click.argument("name")
def harvest(session: Session, name: str) -> None:
    """Harvest NAME's results.json (or results CSV) from S3 into its status again.

    For results written or rewritten after the operator harvested (a custom evaluator run
    later, a trainer that finished after its pod was lost). Harvesting twice is harmless; a
    missing or malformed file changes nothing and exits 1.
    """
    for _attempt in range(5):
        exp = get_experiment(session, name)
        spec = resolved(session, exp)
        succeeded = _job_outcome(session, exp)
        store = run_store(session, exp, spec)
        try:
            report, error = read_results(
                store.client,
                store.bucket,
                store.prefix,
                results_csv_spec(spec),
                job_succeeded=succeeded,
            )
        except S3_ERRORS as exc:
            fail(s3_error(store, exc))
        if report is None:
            fail(f"nothing harvested, status unchanged: {error}")
        patch = harvest_patch(exp, report, spec, now=_now())
        try:
            session.cluster.patch_status(session.namespace, name, patch)
        except ClusterError as exc:
            if exc.status == 409:
                continue  # changed while we read S3: recompute from the fresh object
            raise
        rows = [[k, fmt(v, 6)] for k, v in sorted(report.scores.items())]
        click.echo(render_table(["SCORE", "VALUE"], rows))
        click.echo(f"experiment.kexp.io/{name} harvested", err=True)
        return
    fail(f"experiment {name!r} kept changing while harvesting; try again")


def _metrics(store: RunStore) -> tuple[Curves | None, str | None]:
    """The run's parsed metrics.csv, or None and why."""
    try:
        text = read_text(store.client, store.bucket, store.prefix + contract.METRICS_FILE)
    except S3_ERRORS as exc:
        return None, s3_error(store, exc)
    if text is None:
        return None, f"no {store.uri(contract.METRICS_FILE)} yet (written when the run ends)"
    try:
        return parse_metrics(text), None
    except CurvesError as exc:
        return None, f"{store.uri(contract.METRICS_FILE)}: {exc}"


@click.command()
@cluster_options
@click.argument("name")
@click.option(
    "-o",
    "--output",
    "path",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=Path("-"),
    help="Write the Markdown here (default: stdout).",
)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def report(session: Session, name: str, path: Path, force: bool) -> None:
    """A Markdown report of NAME: configuration, progress by step, best checkpoint, scores,
    a reproducibility checklist and recommendations drawn from its learning curves."""
    exp = get_experiment(session, name)
    spec = resolved(session, exp)
    curves, note = _metrics(run_store(session, exp, spec))
    text = render_report(exp, spec, curves, note)
    if str(path) == "-":
        click.echo(text)
    else:
        write_new_file(path, text, force=force)
        click.echo(f"wrote {path}", err=True)


@click.command()
@cluster_options
@click.argument("names", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Image file (.png, .svg or .pdf).",
)
@click.option(
    "--metric",
    default=None,
    help="Column of metrics.csv to plot (default: episode_reward, else the objective).",
)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
def plot(
    session: Session, names: tuple[str, ...], path: Path, metric: str | None, force: bool
) -> None:
    """Plot learning curves of one or more experiments from their metrics.csv."""
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        fail(f"--output {path}: use a .png, .svg or .pdf file name", EXIT_USAGE)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("kexp plot needs matplotlib: pip install 'kexp[plot]'")
    series: list[tuple[str, str, list[float], list[float]]] = []
    for name in names:
        exp = get_experiment(session, name)
        spec = resolved(session, exp)
        curves, note = _metrics(run_store(session, exp, spec))
        if curves is None:
            fail(f"{name}: {note}", EXIT_NOT_FOUND)
        column = metric or main_curve(curves, (spec.get("objective") or {}).get("metric"))
        if column is None or column not in curves.columns:
            have = ", ".join(curves.columns)
            fail(f"{name}: metrics.csv has no column {column!r} (it has: {have})", EXIT_USAGE)
        steps, values = curves.series(column)
        series.append((name, column, steps, values))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for name, column, steps, values in series:
        ax.plot(steps, values, label=name if metric else f"{name} ({column})")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(metric or series[0][1])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    if path.exists() and not force:
        fail(f"{path} exists; pass --force to replace it")
    try:
        fig.savefig(path)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
    finally:
        plt.close(fig)
    click.echo(f"wrote {path} ({len(series)} curve(s))", err=True)


@click.command()
@cluster_options
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output.")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines.")
def logs(session: Session, name: str, follow: bool, tail: int | None) -> None:
    """Print the trainer's log (every pod of a multi-node run, each line prefixed)."""
    exp = get_experiment(session, name)
    selector = ",".join(f"{k}={v}" for k, v in child_labels(name, "train").items())
    pods = session.cluster.list_objects("Pod", session.namespace, selector)
    if not pods:
        phase = (exp.get("status") or {}).get("phase") or "Pending"
        fail(f"experiment {name!r} has no trainer pods (phase {phase})", EXIT_NOT_FOUND)
    pods.sort(key=lambda p: p["metadata"]["name"])
    if follow and len(pods) > 1:
        # Streams from several pods would interleave mid-line; rank 0 logs for the run.
        pods.sort(key=lambda p: _completion_index(p))
        click.echo(f"following {pods[0]['metadata']['name']} (rank 0) only", err=True)
        pods = pods[:1]
    prefix = len(pods) > 1
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        try:
            pending = b""
            for chunk in session.cluster.pod_log(
                session.namespace, pod_name, tail=tail, follow=follow
            ):
                if not prefix:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                    continue
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    sys.stdout.buffer.write(f"[{pod_name}] ".encode() + line + b"\n")
            if pending:
                sys.stdout.buffer.write(f"[{pod_name}] ".encode() + pending + b"\n")
        except ClusterError as exc:
            fail(f"cannot read the log of pod {pod_name}: {exc}", EXIT_FAILED)


def _completion_index(pod: dict[str, Any]) -> int:
    """The pod's rank in an Indexed Job (0 for a plain Job's pods)."""
    annotations = pod["metadata"].get("annotations") or {}
    value = annotations.get("batch.kubernetes.io/job-completion-index", "0")
    return int(value) if str(value).isdigit() else 0
