"""``kexp list``, ``show``, ``compare`` and ``export``: the lab notebook and the spreadsheet."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from kexp.analysis.compare import best_index, compare
from kexp.analysis.records import (
    HEAD_COLUMNS,
    SORT_KEYS,
    TRIAL_HEAD_COLUMNS,
    UnknownColumn,
    columns_for,
    matches,
    percent,
    record,
    select_columns,
    sort_records,
    trial_records,
)
from kexp.api import contract
from kexp.cli.common import (
    EXIT_NO_MATCH,
    EXIT_USAGE,
    Session,
    cluster_options,
    csv_text,
    dump,
    fail,
    fmt,
    output_option,
    render_table,
    style_phase,
    use_colour,
    write_new_file,
)
from kexp.cli.fetch import get_experiment, records, resolved, sweep_report


def age(timestamp: str | None, now: dt.datetime | None = None) -> str:
    """kubectl-style age: 45s, 12m, 3h, 5d."""
    if not timestamp:
        return ""
    try:
        then = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)  # Kubernetes writes UTC
    seconds = int(((now or dt.datetime.now(dt.UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _filters(func: Any) -> Any:
    for option in reversed(
        [
            click.option(
                "--phase", "phases", multiple=True, help="Only this phase (repeatable: any of)."
            ),
            click.option("--tag", "tags", multiple=True, help="Only with this tag (repeatable)."),
            click.option(
                "--algorithm", "algorithms", multiple=True, help="Only this algorithm (any of)."
            ),
            click.option(
                "-A", "--all-namespaces", is_flag=True, help="Experiments of every namespace."
            ),
        ]
    ):
        func = option(func)
    return func


_sort_option = click.option(
    "--sort",
    "sort_key",
    type=click.Choice(SORT_KEYS, case_sensitive=False),
    default="name",
    show_default=True,
    help="Order: score puts the best first (by each objective's mode); age newest first.",
)


def _selected(
    session: Session,
    all_namespaces: bool,
    phases: Sequence[str],
    tags: Sequence[str],
    algorithms: Sequence[str],
) -> list[dict[str, Any]]:
    every = records(session, all_namespaces)
    chosen = [r for r in every if matches(r, phases=phases, tags=tags, algorithms=algorithms)]
    if not chosen:
        where = "any namespace" if all_namespaces else f"namespace {session.namespace!r}"
        what = "match the filters" if phases or tags or algorithms else "exist"
        fail(f"no experiments {what} in {where} ({len(every)} in all)", EXIT_NO_MATCH)
    return chosen


@click.command("list")
@cluster_options
@_filters
@_sort_option
@output_option()
def list_(
    session: Session,
    all_namespaces: bool,
    phases: tuple[str, ...],
    tags: tuple[str, ...],
    algorithms: tuple[str, ...],
    sort_key: str,
    output: str,
) -> None:
    """List experiments with their phase, progress and score."""
    rows = sort_records(_selected(session, all_namespaces, phases, tags, algorithms), sort_key)
    if output in ("json", "yaml"):
        click.echo(dump(rows, output))
        return
    if output == "csv":
        click.echo(csv_text(columns_for(rows), rows), nl=False)
        return
    if output == "name":
        click.echo("\n".join(f"experiment/{r['name']}" for r in rows))
        return
    header = ["NAME", "PHASE", "ALGO", "ENV", "PROGRESS", "SCORE", "COMMIT", "TAGS", "AGE"]
    if output == "wide":
        header[7:7] = ["OBJECTIVE", "REASON", "TEMPLATE"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    now = dt.datetime.now(dt.UTC)
    table = []
    for r in rows:
        pct = percent(r)
        cells = [
            str(r["name"]),
            style_phase(str(r["phase"])),
            fmt(r["algorithm"]),
            fmt(r["environment"]),
            f"{pct:.0f}%" if pct is not None else "",
            fmt(r["score"]),
            str(r.get("git_commit") or "")[:8],
            str(r.get("tags") or "").replace(";", ","),
            age(r.get("created"), now),
        ]
        if output == "wide":
            cells[7:7] = [f"{r['objective']} ({r['mode']})", fmt(r["reason"]), fmt(r["template"])]
        if all_namespaces:
            cells.insert(0, str(r["namespace"]))
        table.append(cells)
    shrink = [header.index("TAGS"), header.index("ENV")]
    click.echo(render_table(header, table, shrink=shrink))


def _section(title: str) -> str:
    return click.style(title, bold=True) if use_colour() else title


def _pairs(items: Sequence[tuple[str, Any]]) -> list[str]:
    width = max((len(k) for k, v in items if v not in (None, "", {})), default=0)
    return [f"  {k + ':':<{width + 1}} {fmt(v, 6)}" for k, v in items if v not in (None, "", {})]


def show_text(exp: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    """``kexp show``'s human view of one experiment."""
    meta = exp.get("metadata") or {}
    status = exp.get("status") or {}
    rec = record({**exp, "spec": spec})
    progress = status.get("progress") or {}
    lines = [
        f"{_section('Experiment')} {meta.get('namespace')}/{meta.get('name')}",
        *_pairs(
            [
                ("Phase", style_phase(str(rec["phase"]))),
                ("Reason", status.get("reason")),
                ("Message", status.get("message")),
                ("Description", spec.get("description")),
                ("Algorithm", spec.get("algorithm")),
                ("Environment", (spec.get("environment") or {}).get("id")),
                ("Template", spec.get("templateRef")),
                (
                    "Copied from",
                    (meta.get("annotations") or {}).get(contract.ANNOTATION_COPIED_FROM),
                ),
                ("Tags", ", ".join(spec.get("tags") or [])),
                ("Objective", f"{rec['objective']} ({rec['mode']})"),
                ("Score", status.get("score")),
                ("Created", meta.get("creationTimestamp")),
            ]
        ),
    ]
    if progress:
        pct = progress.get("percent")
        lines += [
            _section("Progress"),
            *_pairs(
                [
                    ("Step", f"{progress.get('step')} / {progress.get('totalSteps')}"),
                    ("Percent", f"{pct:.1f}%" if isinstance(pct, int | float) else None),
                    ("Steps/s", progress.get("stepsPerSecond")),
                    ("ETA", progress.get("eta")),
                    ("Heartbeat", progress.get("updatedAt")),
                ]
            ),
        ]
    hp = spec.get("hyperparameters") or {}
    training = spec.get("training") or {}
    lines += [_section("Configuration"), *_pairs([*hp.items(), *training.items()])]
    resources = spec.get("resources") or {}
    if resources:
        lines.append("  resources: " + ", ".join(f"{k}={v}" for k, v in resources.items()))
    prov = status.get("provenance") or {}
    if prov:
        lines += [_section("Provenance"), *_pairs(list(prov.items()))]
    checkpoints = status.get("checkpoints") or {}
    if checkpoints:
        lines += [_section("Checkpoints"), *_pairs(list(checkpoints.items()))]
    results = status.get("results") or {}
    if results:
        lines += [_section("Results"), *_pairs(sorted(results.items()))]
    lines += sweep_lines(spec, status)
    conditions = status.get("conditions") or []
    if conditions:
        lines.append(_section("Conditions"))
        table = [
            [
                str(c.get("type")),
                str(c.get("status")),
                str(c.get("reason") or ""),
                str(c.get("message") or ""),
            ]
            for c in conditions
        ]
        block = render_table(["TYPE", "STATUS", "REASON", "MESSAGE"], table, shrink=[3])
        lines += ["  " + line for line in block.splitlines()]
    return "\n".join(lines)


def sweep_lines(spec: Mapping[str, Any], status: Mapping[str, Any]) -> list[str]:
    """``kexp show``'s Sweep section: the search, the trial counts and the leaderboard."""
    sweep = spec.get("sweep") or {}
    if not sweep:
        return []
    found = status.get("sweep") or {}
    scheduler = (sweep.get("scheduler") or {}).get("type") or "none"
    ray = sweep.get("rayCluster") or {}
    where = f"Ray cluster, {ray.get('workers', 1)} worker(s)" if ray else "one pod"
    counts = None
    if found:
        counts = (
            f"{found.get('trials', 0)} of {found.get('planned', '?')}: "
            f"{found.get('running', 0)} running, {found.get('completed', 0)} completed, "
            f"{found.get('stoppedEarly', 0)} stopped early, {found.get('failed', 0)} failed"
        )
    best = found.get("bestTrial") or {}
    lines = [
        _section("Sweep"),
        *_pairs(
            [
                ("Search", f"{sweep.get('searchAlgorithm') or 'random'}, scheduler {scheduler}"),
                ("Runs on", where),
                ("Trials", counts),
                ("Best trial", best.get("name")),
                ("Best score", best.get("score")),
                ("Best checkpoint", best.get("checkpoint")),
            ]
        ),
    ]
    board = found.get("leaderboard") or []
    if board:
        names = sorted({k for t in board for k in (t.get("hyperparameters") or {})})
        table = [
            [
                str(rank),
                str(t.get("name") or ""),
                str(t.get("state") or ""),
                fmt(t.get("score"), 6),
                fmt(t.get("step")),
                *(fmt((t.get("hyperparameters") or {}).get(n), 4) for n in names),
            ]
            for rank, t in enumerate(board, start=1)
        ]
        block = render_table(["#", "TRIAL", "STATE", "SCORE", "STEP", *names], table)
        lines += ["  " + line for line in block.splitlines()]
    return lines


@click.command()
@cluster_options
@click.argument("name")
@output_option(default="text", choices=("text", "json", "yaml"))
def show(session: Session, name: str, output: str) -> None:
    """Show one experiment: configuration, progress, provenance, checkpoints and scores."""
    exp = get_experiment(session, name)
    spec = resolved(session, exp)
    if output != "text":
        click.echo(dump({**exp, "resolvedSpec": spec}, output))
        return
    click.echo(show_text(exp, spec))


@click.command("compare")
@cluster_options
@click.argument("names", nargs=-1, required=True)
@click.option("--all", "show_all", is_flag=True, help="Also show settings that are the same.")
@output_option(default="table", choices=("table", "json", "yaml", "csv"))
def compare_(session: Session, names: tuple[str, ...], show_all: bool, output: str) -> None:
    """Compare experiments side by side: the settings that differ, then the results."""
    if len(names) < 2:
        fail("compare needs at least two experiment names", EXIT_USAGE)
    if len(set(names)) != len(names):
        fail("compare: an experiment is named twice", EXIT_USAGE)
    exps = [get_experiment(session, n) for n in names]
    recs = [record({**e, "spec": resolved(session, e)}) for e in exps]
    result = compare(recs, show_all=show_all)
    rows = [(k, v) for k, v in result.settings] + [(k, v) for k, v in result.results]
    if output in ("json", "yaml"):
        data = {
            "experiments": result.names,
            "settings": {k: dict(zip(result.names, v, strict=True)) for k, v in result.settings},
            "results": {k: dict(zip(result.names, v, strict=True)) for k, v in result.results},
        }
        click.echo(dump(data, output))
        return
    if output == "csv":
        records_ = [{"field": k, **dict(zip(result.names, v, strict=True))} for k, v in rows]
        click.echo(csv_text(["field", *result.names], records_), nl=False)
        return
    best = best_index(recs)
    header = ["", *(f"{n} *" if i == best else n for i, n in enumerate(result.names))]
    table = [[k, *(fmt(x, 6) for x in v)] for k, v in result.settings]
    if result.settings and result.results:
        table.append(["", *("" for _ in names)])
    table += [[k, *(fmt(x, 6) for x in v)] for k, v in result.results]
    click.echo(render_table(header, table))
    notes = []
    if result.same and not show_all:
        notes.append(f"{result.same} identical setting(s) hidden (--all shows them)")
    if best is not None:
        notes.append(f"* best by objective: {result.names[best]}")
    for note in notes:
        click.echo(note, err=True)


@click.command()
@cluster_options
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@_filters
@click.option(
    "--columns",
    default=None,
    help="Comma-separated columns, in order (a trailing * picks a group: hp.*,result.*).",
)
@_sort_option
@click.option(
    "--trials",
    is_flag=True,
    help="One row per trial of each selected sweep (read from its sweep.json in S3).",
)
@click.option("--force", is_flag=True, help="Replace PATH if it exists.")
def export(
    session: Session,
    path: Path,
    all_namespaces: bool,
    phases: tuple[str, ...],
    tags: tuple[str, ...],
    algorithms: tuple[str, ...],
    columns: str | None,
    sort_key: str,
    trials: bool,
    force: bool,
) -> None:
    """Export the master CSV to PATH ('-' for stdout): one row per experiment.

    Columns, in a stable order: identity and outcome, provenance, then every hyperparameter
    (hp.*), training (train.*), environment (env.*), evaluation (eval.*) and resource (res.*)
    setting, a sweep's search (sweep.*), every harvested score (result.*) and a sweep's trial
    counts (trials.*). With --trials: one row per trial of each sweep, with the
    hyperparameters it ran with (hp.*) and its final scores (result.*).
    """
    rows = sort_records(_selected(session, all_namespaces, phases, tags, algorithms), sort_key)
    head: tuple[str, ...] = HEAD_COLUMNS
    what = "experiment(s)"
    if trials:
        rows, head, what = _trial_rows(session, rows), TRIAL_HEAD_COLUMNS, "trial(s)"
    available = columns_for(rows, head)
    chosen = available
    if columns:
        try:
            chosen = select_columns(available, [c.strip() for c in columns.split(",") if c])
        except UnknownColumn as exc:
            fail(str(exc), EXIT_USAGE)
    text = csv_text(chosen, rows)
    if str(path) == "-":
        sys.stdout.write(text)
        return
    write_new_file(path, text, force=force)
    click.echo(f"wrote {len(rows)} {what}, {len(chosen)} columns to {path}", err=True)


def _trial_rows(session: Session, selected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials of the selected experiments that are sweeps, in their order."""
    rows: list[dict[str, Any]] = []
    sweeps = 0
    for rec in selected:
        if not any(str(k).startswith("sweep.") for k in rec):
            continue
        sweeps += 1
        there = dataclasses.replace(session, namespace_flag=str(rec["namespace"]))
        exp = get_experiment(there, str(rec["name"]))
        spec = resolved(there, exp)
        report = sweep_report(there, exp, spec)
        if report is not None:
            rows += trial_records({**exp, "spec": spec}, report)
    if not sweeps:
        fail("--trials: none of the selected experiments is a sweep", EXIT_NO_MATCH)
    return rows
