"""A sweep's status from its ``sweep.json`` and, on a Ray cluster, from its RayJob (pure).

The tune entry point rewrites ``sweep.json`` while the sweep runs; the operator reads it in its
progress poll and once more when the sweep's workload ends, and these functions turn it into
``status.sweep`` (counts, best trial, a bounded leaderboard) and the progress percent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from kexp.api.models import MAX_LEADERBOARD
from kexp.api.reports import SweepReport, TrialReport
from kexp.status.progress import parse_time
from kexp.status.training import TrainingState

#: Trial states that are over; the rest are pending or running.
FINISHED: Final = frozenset({"completed", "stoppedEarly", "failed"})
SWEEP_RUNNING_MESSAGE: Final = "the sweep is running"


def ranked(trials: Iterable[TrialReport], mode: str) -> list[TrialReport]:
    """Trials with a score, best first: completed ones, then the rest.

    A completed trial's score comes from its final evaluation; the others' from training,
    which is not the same measurement, so they never outrank a completed trial.
    """
    sign = -1.0 if mode != "min" else 1.0
    scored = [t for t in trials if t.score is not None]
    return sorted(
        scored,
        key=lambda t: (t.state != "completed", sign * float(t.score or 0.0), t.name),
    )


def best_trial(report: SweepReport) -> TrialReport | None:
    """The best trial by the objective (a completed one when there is any)."""
    order = ranked(report.trials, report.mode)
    return order[0] if order else None


def trial_status(trial: TrialReport) -> dict[str, Any]:
    """One trial as ``status.sweep`` shows it (wire format)."""
    entry: dict[str, Any] = {
        "name": trial.name,
        "state": trial.state,
        "hyperparameters": dict(trial.hyperparameters),
        "score": trial.score,
        "step": trial.step,
        "checkpoint": trial.checkpoint,
        "error": trial.error[:1024] if trial.error else None,
    }
    return {k: v for k, v in entry.items() if v is not None}


def counts(report: SweepReport) -> dict[str, int]:
    """How many trials are in each state."""
    states = [t.state for t in report.trials]
    return {
        "trials": len(states),
        "running": states.count("running"),
        "completed": states.count("completed"),
        "stoppedEarly": states.count("stoppedEarly"),
        "failed": states.count("failed"),
    }


def sweep_status(report: SweepReport, limit: int = MAX_LEADERBOARD) -> dict[str, Any]:
    """``status.sweep``: counts, the best trial and the ``limit`` best trials."""
    order = ranked(report.trials, report.mode)
    status: dict[str, Any] = {**counts(report), "updatedAt": report.updated_at}
    if report.planned is not None:
        status["planned"] = report.planned
    if order:
        status["bestTrial"] = trial_status(order[0])
    status["leaderboard"] = [trial_status(t) for t in order[:limit]]
    return status


def sweep_percent(report: SweepReport) -> float | None:
    """Finished trials as a percentage of the planned ones."""
    planned = report.planned or len(report.trials)
    if not planned:
        return None
    done = sum(1 for t in report.trials if t.state in FINISHED)
    return round(min(100.0, 100.0 * done / planned), 1)


def sweep_progress(report: SweepReport) -> dict[str, Any]:
    """``status.progress`` of a sweep: the share of trials finished."""
    progress: dict[str, Any] = {"updatedAt": report.updated_at}
    percent = sweep_percent(report)
    if percent is not None:
        progress["percent"] = percent
    return progress


def first_error(report: SweepReport) -> str | None:
    """The sweep's own error, else the first failed trial's, naming the trial."""
    if report.error:
        return report.error
    for trial in report.trials:
        if trial.state == "failed":
            return f"trial {trial.name}: {trial.error or 'failed without a message'}"
    return None


def all_failed(report: SweepReport) -> bool:
    """Every trial the sweep ran failed (and it ran at least one)."""
    return bool(report.trials) and all(t.state == "failed" for t in report.trials)


def failure_message(report: SweepReport) -> str | None:
    """Why a finished sweep failed, or None when it did not."""
    if report.outcome != "failed" and not all_failed(report):
        return None
    error = first_error(report) or "the sweep failed"
    if all_failed(report):
        return f"all {len(report.trials)} trial(s) failed; first error: {error}"
    return error


def sweep_summary(report: SweepReport) -> str:
    """One line for a finished sweep: counts and the best trial."""
    c = counts(report)
    text = (
        f"{c['trials']} trial(s): {c['completed']} completed, {c['stoppedEarly']} stopped "
        f"early, {c['failed']} failed"
    )
    best = best_trial(report)
    if best is not None:
        text += f"; best {best.name} ({report.metric} {best.score:.6g})"
    return text


def heartbeat_age(report: SweepReport, now: str) -> float:
    """Seconds since the sweep last wrote its report."""
    return (parse_time(now) - parse_time(report.updated_at)).total_seconds()


# ---- RayJob ---------------------------------------------------------------------------------
def ray_job_state(ray_job: dict[str, Any] | None) -> TrainingState:
    """The phase a KubeRay RayJob implies (None: not created yet).

    KubeRay reports the deployment (``jobDeploymentStatus``: Initializing, Running, Complete,
    Failed, ...) and the Ray job itself (``jobStatus``: PENDING, RUNNING, SUCCEEDED, FAILED,
    STOPPED); a Complete deployment whose job did not succeed is a failure.
    """
    if ray_job is None:
        return TrainingState("Pending", "RayJobNotCreated", "the RayJob is not created yet")
    status = ray_job.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or ""
    job = status.get("jobStatus") or ""
    started = status.get("startTime")
    ended = status.get("endTime")
    if deployment == "Failed" or (deployment == "Complete" and job != "SUCCEEDED"):
        reason = status.get("reason") or "RayJobFailed"
        message = status.get("message") or f"the RayJob failed (Ray job {job or 'unknown'})"
        return TrainingState("Failed", str(reason), str(message), started, ended)
    if deployment == "Complete":
        return TrainingState("Succeeded", "RayJobComplete", "the sweep finished", started, ended)
    if deployment == "Running" and job == "RUNNING":
        return TrainingState("Running", "RayJobRunning", SWEEP_RUNNING_MESSAGE, started)
    return TrainingState(
        "Pending", "RayClusterStarting", "waiting for the Ray cluster and the job to start"
    )


def ray_job_ended(ray_job: dict[str, Any]) -> bool:
    """The RayJob finished, one way or the other."""
    return ray_job_state(ray_job).phase in ("Succeeded", "Failed")


def ray_job_succeeded(ray_job: dict[str, Any]) -> bool:
    """The RayJob's Ray job succeeded."""
    return ray_job_state(ray_job).phase == "Succeeded"
