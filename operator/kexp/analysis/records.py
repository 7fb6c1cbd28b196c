"""One Experiment as one flat record: the row of ``kexp list`` and of the master CSV.

The master CSV's columns come in a stable order: a fixed head (identity, outcome,
provenance), then every hyperparameter, training, environment and resource setting, then
every score, each group sorted by name. The same set of experiments always exports the same
columns in the same order, and a new hyperparameter only adds a column.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from kexp.api.models import merge_template
from kexp.api.reports import SweepReport
from kexp.status.harvest import objective_metric

#: The fixed leading columns of the master CSV, in order.
HEAD_COLUMNS: Final = (
    "namespace",
    "name",
    "phase",
    "reason",
    "algorithm",
    "environment",
    "template",
    "tags",
    "description",
    "objective",
    "mode",
    "score",
    "step",
    "total_steps",
    "git_commit",
    "git_branch",
    "git_dirty",
    "repository",
    "image",
    "config_hash",
    "init_from",
    "init_from_checkpoint",
    "best_checkpoint",
    "best_step",
    "latest_checkpoint",
    "created",
    "started",
    "completed",
    "duration_s",
    "uid",
)
#: Groups of variable columns, in the order they follow the head. ``sweep.`` (how a sweep
#: searched) and ``trials.`` (how its trials ended) appear only for sweeps.
GROUPS: Final = ("hp.", "train.", "env.", "eval.", "res.", "sweep.", "result.", "trials.")
#: The leading columns of ``kexp export --trials`` (one row per trial of a sweep).
TRIAL_HEAD_COLUMNS: Final = (
    "namespace",
    "name",
    "trial",
    "state",
    "algorithm",
    "environment",
    "objective",
    "mode",
    "score",
    "step",
    "iterations",
    "checkpoint",
    "error",
    "git_commit",
    "config_hash",
    "uid",
)


def _scalar(value: Any) -> Any:
    """A CSV-friendly value: nested data as compact JSON, None stays empty."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def _flatten(prefix: str, value: Mapping[str, Any], out: dict[str, Any]) -> None:
    for key, item in value.items():
        if isinstance(item, dict) and item:
            _flatten(f"{prefix}{key}.", item, out)
        else:
            out[f"{prefix}{key}"] = _scalar(item)


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        a = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = dt.datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    if (a.tzinfo is None) != (b.tzinfo is None):
        a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)  # both UTC, as Kubernetes writes
    return (b - a).total_seconds()


def spec_of(exp: Mapping[str, Any], template_spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Experiment's spec with its template (if any) merged under it, as the operator does.

    The template is read as it is now; ``provenance.configHash`` identifies the exact
    configuration a run used should the template have changed since.
    """
    spec = dict(exp.get("spec") or {})
    return merge_template(template_spec, spec) if template_spec else spec


def record(
    exp: Mapping[str, Any], template_spec: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """An Experiment as one flat record keyed by column name (see HEAD_COLUMNS, GROUPS)."""
    meta = exp.get("metadata") or {}
    spec = spec_of(exp, template_spec)
    status = exp.get("status") or {}
    prov = status.get("provenance") or {}
    progress = status.get("progress") or {}
    checkpoints = status.get("checkpoints") or {}
    environment = spec.get("environment") or {}
    objective = spec.get("objective") or {}
    started = prov.get("startedAt")
    completed = prov.get("completedAt")
    row: dict[str, Any] = {
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "phase": status.get("phase") or "Pending",
        "reason": status.get("reason"),
        "algorithm": status.get("algorithm") or spec.get("algorithm"),
        "environment": status.get("environment") or environment.get("id"),
        "template": spec.get("templateRef"),
        "tags": ";".join(spec.get("tags") or []),
        "description": spec.get("description"),
        "objective": objective_metric(spec),
        "mode": objective.get("mode") or "max",
        "score": status.get("score"),
        "step": progress.get("step"),
        "total_steps": progress.get("totalSteps") or (spec.get("training") or {}).get("totalSteps"),
        "git_commit": prov.get("gitCommit"),
        "git_branch": prov.get("gitBranch"),
        "git_dirty": prov.get("gitDirty"),
        "repository": prov.get("repository"),
        "image": prov.get("image"),
        "config_hash": prov.get("configHash"),
        "init_from": (spec.get("initFrom") or {}).get("experiment"),
        "init_from_checkpoint": prov.get("initFromCheckpoint"),
        "best_checkpoint": checkpoints.get("best"),
        "best_step": checkpoints.get("bestStep"),
        "latest_checkpoint": checkpoints.get("latest"),
        "created": meta.get("creationTimestamp"),
        "started": started,
        "completed": completed,
        "duration_s": _seconds_between(started, completed),
        "uid": meta.get("uid"),
    }
    variable: dict[str, Any] = {}
    _flatten("hp.", spec.get("hyperparameters") or {}, variable)
    _flatten("train.", spec.get("training") or {}, variable)
    _flatten("env.", {k: v for k, v in environment.items() if k != "id"}, variable)
    _flatten("eval.", spec.get("evaluation") or {}, variable)
    _flatten("res.", spec.get("resources") or {}, variable)
    for name, value in (status.get("results") or {}).items():
        variable[f"result.{name}"] = value
    variable.update(_sweep_columns(spec, status))
    row.update(variable)
    return row


def _sweep_columns(spec: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Any]:
    """``sweep.*`` (the search) and ``trials.*`` (its outcome), for a sweep only."""
    sweep = spec.get("sweep") or {}
    if not sweep:
        return {}
    ray = sweep.get("rayCluster") or {}
    columns: dict[str, Any] = {
        "sweep.search": sweep.get("searchAlgorithm") or "random",
        "sweep.scheduler": (sweep.get("scheduler") or {}).get("type") or "none",
        "sweep.num_samples": sweep.get("numSamples"),
        "sweep.max_concurrent_trials": sweep.get("maxConcurrentTrials"),
        "sweep.ray_workers": ray.get("workers") if ray else None,
    }
    for name, space in (sweep.get("parameters") or {}).items():
        columns[f"sweep.param.{name}"] = _scalar(space)
    found = status.get("sweep") or {}
    if found:
        columns.update(
            {
                "trials.total": found.get("trials"),
                "trials.completed": found.get("completed"),
                "trials.stopped_early": found.get("stoppedEarly"),
                "trials.failed": found.get("failed"),
                "trials.best": (found.get("bestTrial") or {}).get("name"),
            }
        )
    return {k: v for k, v in columns.items() if v is not None}


def trial_records(
    exp: Mapping[str, Any], report: SweepReport, template_spec: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One flat record per trial of a sweep (``kexp export --trials``).

    Each row names its experiment and trial; ``hp.*`` are the hyperparameters the trial ran
    with (the spec's, overridden by the trial's), ``result.*`` its final evaluation.
    """
    meta = exp.get("metadata") or {}
    spec = spec_of(exp, template_spec)
    status = exp.get("status") or {}
    prov = status.get("provenance") or {}
    objective = spec.get("objective") or {}
    base = dict(spec.get("hyperparameters") or {})
    rows: list[dict[str, Any]] = []
    for trial in report.trials:
        row: dict[str, Any] = {
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "trial": trial.name,
            "state": trial.state,
            "algorithm": status.get("algorithm") or spec.get("algorithm"),
            "environment": status.get("environment") or (spec.get("environment") or {}).get("id"),
            "objective": objective_metric(spec),
            "mode": objective.get("mode") or "max",
            "score": trial.score,
            "step": trial.step,
            "iterations": trial.iterations,
            "checkpoint": trial.checkpoint,
            "error": trial.error,
            "git_commit": prov.get("gitCommit"),
            "config_hash": prov.get("configHash"),
            "uid": meta.get("uid"),
        }
        _flatten("hp.", {**base, **trial.hyperparameters}, row)
        for name, value in trial.scores.items():
            row[f"result.{name}"] = value
        rows.append(row)
    return rows


def columns_for(
    records: Iterable[Mapping[str, Any]], head: Sequence[str] = HEAD_COLUMNS
) -> list[str]:
    """The CSV's columns for these records: ``head``, then each group sorted."""
    seen: set[str] = set()
    for rec in records:
        seen.update(rec)
    variable = seen.difference(head)
    ordered = list(head)
    for group in GROUPS:
        ordered += sorted(c for c in variable if c.startswith(group))
    ordered += sorted(c for c in variable if not c.startswith(GROUPS))
    return ordered


class UnknownColumn(ValueError):
    """``--columns`` named a column no record has."""


def select_columns(available: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """``wanted`` in its order; a trailing ``*`` selects a group (``hp.*``). Unknown: error."""
    chosen: list[str] = []
    for item in wanted:
        if item.endswith("*"):
            matched = [c for c in available if c.startswith(item[:-1])]
        else:
            matched = [item] if item in available else []
        if not matched:
            raise UnknownColumn(
                f"--columns: no column {item!r}; available: {', '.join(available[:12])}"
                + (", ..." if len(available) > 12 else "")
            )
        chosen += [c for c in matched if c not in chosen]
    return chosen


# ---- filtering and sorting ------------------------------------------------------------------
def matches(
    rec: Mapping[str, Any],
    *,
    phases: Sequence[str] = (),
    tags: Sequence[str] = (),
    algorithms: Sequence[str] = (),
) -> bool:
    """Phase and algorithm: any of those given (case-insensitive); tags: all of them."""
    if phases and str(rec.get("phase") or "").lower() not in {p.lower() for p in phases}:
        return False
    if algorithms and str(rec.get("algorithm") or "").lower() not in {
        a.lower() for a in algorithms
    }:
        return False
    have = set(filter(None, str(rec.get("tags") or "").split(";")))
    return set(tags) <= have


SORT_KEYS: Final = ("name", "age", "score", "phase", "progress")


def sort_records(records: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Records in ``key`` order; ``score`` puts the best first by each one's objective mode,
    and runs without a score last. ``age``: newest first."""
    key = key.lower()
    if key == "score":

        def by_score(rec: Mapping[str, Any]) -> tuple[int, float, str]:
            score = rec.get("score")
            if not isinstance(score, int | float):
                return (1, 0.0, str(rec.get("name")))
            best_first = -score if rec.get("mode") != "min" else score
            return (0, float(best_first), str(rec.get("name")))

        return sorted(records, key=by_score)
    if key == "age":
        return sorted(records, key=lambda r: str(r.get("created") or ""), reverse=True)
    if key == "progress":
        return sorted(records, key=lambda r: -(percent(r) or 0.0))
    if key == "phase":
        return sorted(records, key=lambda r: (str(r.get("phase")), str(r.get("name"))))
    if key == "name":
        return sorted(records, key=lambda r: (str(r.get("namespace")), str(r.get("name"))))
    raise ValueError(f"--sort: unknown key {key!r}; use one of {', '.join(SORT_KEYS)}")


def percent(rec: Mapping[str, Any]) -> float | None:
    """How far the run is, 0-100, from its step and total."""
    step, total = rec.get("step"), rec.get("total_steps")
    if isinstance(step, int | float) and isinstance(total, int | float) and total > 0:
        return min(100.0, 100.0 * step / total)
    return 100.0 if rec.get("phase") == "Succeeded" else None
