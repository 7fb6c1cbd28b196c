"""From what a finished run wrote to what its status keeps: scores, score and checkpoints.

Pure functions shared by the operator (which harvests when a Job ends) and ``kexp harvest``
(which re-harvests on request), so both write exactly the same fields. Harvesting twice
gives the same status: nothing here depends on what the status held before.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping
from typing import Any, Final

from kexp.api.reports import ResultsReport
from kexp.status.conditions import set_condition

#: status.results keeps at most this many scores; the full set stays in S3.
MAX_RESULTS: Final = 32
DEFAULT_OBJECTIVE: Final = "pdm_score"


class HarvestError(ValueError):
    """A results file that cannot be harvested; the message names the file and the problem."""


def objective_metric(spec: Mapping[str, Any]) -> str:
    """The score that ``spec.objective.metric`` names (the SCORE column)."""
    return str((spec.get("objective") or {}).get("metric") or DEFAULT_OBJECTIVE)


def results_csv_spec(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """``spec.evaluation.resultsCsv`` when the experiment's scores come from a CSV."""
    value = (spec.get("evaluation") or {}).get("resultsCsv")
    return dict(value) if isinstance(value, dict) else None


def _aggregate(values: list[float], how: str) -> float:
    if how == "last":
        return values[-1]
    if how == "min":
        return min(values)
    if how == "max":
        return max(values)
    return statistics.fmean(values)


def scores_from_csv(text: str, csv_spec: Mapping[str, Any], where: str) -> dict[str, float]:
    """Scores from a custom evaluator's CSV: each mapped column aggregated over its rows.

    Empty cells are skipped (a per-scenario table may leave some blank); a column that is
    missing or holds no number at all is an error naming the column and the mapping's field.
    """
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    rows = list(reader)
    columns: Mapping[str, str] = csv_spec.get("columns") or {}
    how = str(csv_spec.get("aggregate") or "mean")
    scores: dict[str, float] = {}
    for score, column in columns.items():
        field = f"spec.evaluation.resultsCsv.columns.{score}"
        if column not in header:
            raise HarvestError(
                f"{where} has no column {column!r} ({field}); its columns are {header}"
            )
        values: list[float] = []
        for number, row in enumerate(rows, start=2):
            cell = (row.get(column) or "").strip()
            if not cell:
                continue
            try:
                value = float(cell)
            except ValueError:
                raise HarvestError(
                    f"{where} line {number}: column {column!r} ({field}) is not a number: {cell!r}"
                ) from None
            if not math.isfinite(value):
                raise HarvestError(f"{where} line {number}: column {column!r} is {cell}")
            values.append(value)
        if not values:
            raise HarvestError(f"{where}: column {column!r} ({field}) has no values")
        scores[score] = _aggregate(values, how)
    return scores


def merge_csv_scores(
    report: ResultsReport | None, csv_scores: Mapping[str, float], job_succeeded: bool
) -> ResultsReport:
    """results.json (if any) with the CSV's scores laid over it.

    A custom trainer may write no results.json at all; the Job's own outcome decides then.
    """
    if report is None:
        return ResultsReport(
            outcome="succeeded" if job_succeeded else "failed",
            scores=dict(csv_scores),
            error=None if job_succeeded else "the training Job failed",
        )
    return report.model_copy(update={"scores": {**report.scores, **csv_scores}})


def harvested_fields(report: ResultsReport, spec: Mapping[str, Any]) -> dict[str, Any]:
    """``results``, ``score`` and ``checkpoints`` of status, from a run's results.

    Only the first MAX_RESULTS scores by name are kept (status must stay small); the
    objective's score is always among them when the run reported it.
    """
    metric = objective_metric(spec)
    names = sorted(report.scores)
    kept = names[:MAX_RESULTS]
    if metric in report.scores and metric not in kept:
        kept = [*names[: MAX_RESULTS - 1], metric]
    scores = {name: report.scores[name] for name in sorted(kept)}
    fields: dict[str, Any] = {"results": scores}
    if metric in scores:
        fields["score"] = scores[metric]
    checkpoints = {
        "latest": report.checkpoints.latest,
        "best": report.checkpoints.best,
        "bestStep": report.checkpoints.best_step,
    }
    fields["checkpoints"] = {k: v for k, v in checkpoints.items() if v is not None}
    fields["provenance"] = environment_provenance(report)
    return fields


def environment_provenance(report: ResultsReport) -> dict[str, Any]:
    """What the trainer reported about where it ran, as provenance fields."""
    env = report.environment
    if env is None:
        return {}
    found = {
        "pythonVersion": env.python_version,
        "torchVersion": env.torch_version,
        "cudaVersion": env.cuda_version,
        "device": env.device,
    }
    return {k: v for k, v in found.items() if v}


def failure_message(report: ResultsReport) -> str | None:
    """Why the trainer said it failed (with the spec field at fault), or None if it did not."""
    if report.outcome != "failed":
        return None
    field = f" ({report.error_field})" if report.error_field else ""
    return f"{report.error or 'the trainer reported a failure'}{field}"


def harvest_patch(
    exp: Mapping[str, Any], report: ResultsReport, spec: Mapping[str, Any], *, now: str
) -> dict[str, Any]:
    """A merge patch of an Experiment's status that re-harvests ``report`` into it.

    Scores the new report lacks are removed (a merge patch would otherwise keep them); a
    trainer-reported failure moves the phase to Failed, as the operator's harvest does. The
    patch carries the resourceVersion it was computed from, so a concurrent change wins and
    the caller retries instead of overwriting it.
    """
    meta = exp.get("metadata") or {}
    status = exp.get("status") or {}
    fields = harvested_fields(report, spec)
    stale = set(status.get("results") or {}) - set(fields["results"])
    fields["results"] = {**fields["results"], **dict.fromkeys(sorted(stale))}
    old_checkpoints = status.get("checkpoints") or {}
    fields["checkpoints"] = {
        **dict.fromkeys(set(old_checkpoints) - set(fields["checkpoints"])),
        **fields["checkpoints"],
    }
    if "score" not in fields and status.get("score") is not None:
        fields["score"] = None
    conditions = set_condition(
        list(status.get("conditions") or []),
        "Harvested",
        True,
        "ResultsHarvested",
        f"{len(report.scores)} score(s) harvested again by kexp harvest",
        now=now,
        generation=meta.get("generation"),
    )
    if not fields["provenance"]:
        del fields["provenance"]  # a merge patch of {} would be a no-op anyway
    patch: dict[str, Any] = {**fields, "conditions": conditions}
    failure = failure_message(report)
    if failure is not None:
        patch.update({"phase": "Failed", "reason": "TrainerFailed", "message": failure})
    return {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": patch}
