"""Training progress for status, from the trainer's progress.json heartbeat (pure)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kexp.api.reports import ProgressReport


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 UTC timestamp as written by Kubernetes and the trainer."""
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def progress_status(report: ProgressReport) -> dict[str, Any]:
    """status.progress: step, total, percent, speed and the ETA the speed implies."""
    percent = min(100.0, 100.0 * report.step / report.total_steps)
    status: dict[str, Any] = {
        "step": report.step,
        "totalSteps": report.total_steps,
        "percent": round(percent, 1),
        "stepsPerSecond": round(report.steps_per_second, 2),
        "updatedAt": report.updated_at,
    }
    remaining = max(0, report.total_steps - report.step)
    if report.steps_per_second > 0:
        finish = parse_time(report.updated_at) + dt.timedelta(
            seconds=remaining / report.steps_per_second
        )
        status["eta"] = finish.strftime("%Y-%m-%dT%H:%M:%SZ")
    return status


def stalled_for(report: ProgressReport, now: str, threshold_s: float) -> float | None:
    """Seconds since the last heartbeat if that is longer than ``threshold_s``, else None."""
    age = (parse_time(now) - parse_time(report.updated_at)).total_seconds()
    return age if age > threshold_s else None
