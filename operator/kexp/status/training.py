"""What a training Job and its pods say about an Experiment's phase.

The pod-level reasons (OOMKilled, image pull errors, unschedulable, a non-zero exit) are what
a researcher needs to act on; the Job's own reason (BackoffLimitExceeded, DeadlineExceeded)
says why it gave up. Both surface in the Experiment's status and Events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

Phase = Literal["Pending", "Waiting", "Running", "Evaluating", "Succeeded", "Failed"]

#: Container waiting reasons that will not fix themselves without the user.
STUCK_WAITING_REASONS: Final = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",
    }
)


STARTING_MESSAGE: Final = "waiting for the trainer pod to start"
RUNNING_MESSAGE: Final = "the trainer is running"


@dataclass(frozen=True)
class TrainingState:
    """The phase a Job implies, with the reason and message to show for it."""

    phase: Phase
    reason: str
    message: str
    started_at: str | None = None
    completed_at: str | None = None


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def pod_problem(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The most telling problem among the pods, as (reason, message), or None."""
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status", {})
        for cs in status.get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            code = terminated.get("exitCode")
            if terminated and code not in (None, 0):
                reason = terminated.get("reason") or "Error"
                detail = f": {terminated['message']}" if terminated.get("message") else ""
                return reason, (
                    f"pod {name}: container {cs.get('name')} terminated with exit code "
                    f"{code} ({reason}){detail}"
                )
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITING_REASONS:
                return waiting["reason"], (
                    f"pod {name}: container {cs.get('name')} is waiting: {waiting['reason']}"
                    + (f": {waiting['message']}" if waiting.get("message") else "")
                )
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                reason = cond.get("reason") or "Unschedulable"
                return reason, f"pod {name} cannot be scheduled: {cond.get('message', reason)}"
    return None


def _first_start(pods: list[dict[str, Any]]) -> str | None:
    starts = [p.get("status", {}).get("startTime") for p in pods]
    present = sorted(s for s in starts if s)
    return present[0] if present else None


def training_state(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> TrainingState:
    """The phase implied by the training Job (None: not created yet) and its pods."""
    if job is None:
        return TrainingState("Pending", "JobNotCreated", "the training Job is not created yet")
    status = job.get("status", {})
    started = status.get("startTime") or _first_start(pods)
    failed = _job_condition(job, "Failed")
    if failed is not None:
        problem = pod_problem(pods)
        job_reason = failed.get("reason") or "JobFailed"
        message = failed.get("message") or "the training Job failed"
        if problem is not None:
            reason, detail = problem
            message = f"{message}; {detail}"
        else:
            reason = job_reason
        return TrainingState("Failed", reason, message, started, failed.get("lastTransitionTime"))
    complete = _job_condition(job, "Complete")
    if complete is not None:
        return TrainingState(
            "Succeeded",
            "JobComplete",
            "training finished",
            started,
            status.get("completionTime") or complete.get("lastTransitionTime"),
        )
    phases = [p.get("status", {}).get("phase") for p in pods]
    running = phases.count("Running")
    problem = pod_problem(pods)
    # Messages stay the same within a phase: every change of wording is a status write, and
    # at scale those writes are the API server's largest cost (see docs/operator.md).
    if (running or "Succeeded" in phases) and problem is None:
        # A pod that is done before the Job controller marks the Job Complete keeps the run
        # Running; otherwise the phase would flap Running -> Pending -> Succeeded.
        return TrainingState("Running", "PodRunning", RUNNING_MESSAGE, started)
    if problem is not None:
        reason, message = problem
        return TrainingState("Pending", reason, message, started)
    return TrainingState("Pending", "JobCreated", STARTING_MESSAGE, started)
