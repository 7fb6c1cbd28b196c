"""``kexp report``: one experiment as a Markdown page a researcher can paste or commit.

Configuration, a progress table by step, the best checkpoint, the scores, a
reproducibility checklist and recommendations drawn from the curves. Pure: the CLI hands in
the Experiment, its resolved spec and the run's metrics.csv (or why it has none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import yaml

from kexp.analysis.curves import Curves, diagnose, progress_table
from kexp.status.harvest import objective_metric

#: Advice for failure reasons the operator records.
_FAILURE_ADVICE: Final = {
    "OOMKilled": "the trainer ran out of memory: raise spec.resources.memory or lower "
    "batchSize / numEnvs.",
    "DeadlineExceeded": "the run hit spec.retry.activeDeadlineSeconds: raise it, or lower "
    "totalSteps.",
    "BackoffLimitExceeded": "every retry failed: read `kexp logs` for the first error.",
    "ImagePullBackOff": "the trainer image could not be pulled: check spec.trainer.image and "
    "the registry credentials.",
    "ErrImagePull": "the trainer image could not be pulled: check spec.trainer.image.",
    "Unschedulable": "no node can fit the pod: lower spec.resources or add GPU nodes.",
    "TrainerFailed": "the trainer stopped with an error (see Reason above); fix the named "
    "field and submit a new experiment.",
}


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = [
        "| " + " | ".join(_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _check(ok: bool, text: str) -> str:
    return f"- [{'x' if ok else ' '}] {text}"


def checklist(exp: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    """What a reproduction needs, and whether this run recorded it."""
    status = exp.get("status") or {}
    prov = status.get("provenance") or {}
    image = str(prov.get("image") or (spec.get("trainer") or {}).get("image") or "")
    commit = prov.get("gitCommit")
    dirty = prov.get("gitDirty")
    seed = (spec.get("training") or {}).get("seed")
    return [
        _check(bool(commit), f"code commit recorded ({commit or 'none: set spec.source'})"),
        _check(
            dirty is False,
            "working tree was clean"
            if dirty is False
            else "working tree was clean (it was dirty or unknown: commit before submitting)",
        ),
        _check(bool(prov.get("configHash")), f"config hash ({prov.get('configHash') or 'none'})"),
        _check(seed is not None, f"seed fixed ({seed})"),
        _check(
            "@sha256:" in image,
            f"trainer image pinned by digest ({image or 'default image'})",
        ),
        _check(
            bool(prov.get("torchVersion") or prov.get("pythonVersion")),
            "software versions recorded (python "
            f"{prov.get('pythonVersion') or '?'}, torch {prov.get('torchVersion') or '?'}, "
            f"device {prov.get('device') or '?'})",
        ),
        _check(
            bool((status.get("checkpoints") or {}).get("best")),
            "best checkpoint stored in S3",
        ),
    ]


def render_report(
    exp: Mapping[str, Any],
    spec: Mapping[str, Any],
    curves: Curves | None,
    curves_note: str | None = None,
) -> str:
    """The Markdown report of one experiment (``spec``: resolved with its template)."""
    meta = exp.get("metadata") or {}
    status = exp.get("status") or {}
    prov = status.get("provenance") or {}
    checkpoints = status.get("checkpoints") or {}
    results: Mapping[str, Any] = status.get("results") or {}
    objective = objective_metric(spec)
    mode = (spec.get("objective") or {}).get("mode") or "max"
    name = meta.get("name")
    out: list[str] = [f"# Experiment `{name}`", ""]
    if spec.get("description"):
        out += [f"> {spec['description']}", ""]
    summary = [
        ("Namespace", meta.get("namespace")),
        ("Phase", status.get("phase") or "Pending"),
        ("Reason", status.get("reason")),
        ("Message", status.get("message")),
        ("Algorithm", spec.get("algorithm")),
        ("Environment", (spec.get("environment") or {}).get("id")),
        ("Template", spec.get("templateRef")),
        ("Tags", ", ".join(spec.get("tags") or [])),
        ("Objective", f"{objective} ({mode})"),
        ("Score", status.get("score")),
        ("Git commit", prov.get("gitCommit")),
        ("Submitted", prov.get("submittedAt") or meta.get("creationTimestamp")),
        ("Started", prov.get("startedAt")),
        ("Completed", prov.get("completedAt")),
    ]
    out += [markdown_table(["", ""], [r for r in summary if r[1] not in (None, "")]), ""]

    out += ["## Configuration", "", "```yaml", yaml.safe_dump(dict(spec), sort_keys=True).rstrip()]
    out += ["```", ""]

    out += ["## Progress by step", ""]
    if curves is not None and curves.steps:
        header, rows = progress_table(curves, objective=objective)
        out += [markdown_table(header, rows), ""]
    else:
        out += [curves_note or "No metrics.csv yet: the trainer writes it when the run ends.", ""]

    out += ["## Best checkpoint", ""]
    if checkpoints.get("best"):
        step = checkpoints.get("bestStep")
        out.append(f"- best: `{checkpoints['best']}`" + (f" (step {step})" if step else ""))
    if checkpoints.get("latest"):
        out.append(f"- latest: `{checkpoints['latest']}`")
    if not checkpoints:
        out.append("No checkpoint recorded.")
    out.append("")

    out += ["## Scores", ""]
    if results:
        rows_ = [[k, v, "objective" if k == objective else ""] for k, v in sorted(results.items())]
        out += [markdown_table(["score", "value", ""], rows_), ""]
    else:
        out += ["No scores harvested yet.", ""]

    out += ["## Reproducibility checklist", "", *checklist(exp, spec), ""]

    advice: list[str] = []
    reason = status.get("reason")
    if status.get("phase") == "Failed" and reason in _FAILURE_ADVICE:
        advice.append(f"Failed ({reason}): {_FAILURE_ADVICE[reason]}")
    if curves is not None and curves.steps:
        advice += diagnose(curves, objective, mode)
    out += ["## Recommendations", ""]
    out += [f"- {a}" for a in advice] if advice else ["- Nothing stands out in the curves."]
    out.append("")
    return "\n".join(out)
