"""Phase derivation from Job and pod objects, and condition bookkeeping."""

from __future__ import annotations

from typing import Any

import pytest

from kexp.status.conditions import condition, set_condition
from kexp.status.training import pod_problem, training_state


def job(*conds: tuple[str, str], active: int = 0, **status: Any) -> dict[str, Any]:
    conditions = [
        {
            "type": t,
            "status": "True",
            "reason": r,
            "message": f"{r} happened",
            "lastTransitionTime": "2026-01-01T00:10:00Z",
        }
        for t, r in conds
    ]
    return {
        "status": {
            "conditions": conditions,
            "active": active,
            "startTime": "2026-01-01T00:00:00Z",
            **status,
        }
    }


def pod(
    phase: str = "Running",
    *,
    terminated: dict[str, Any] | None = None,
    waiting: dict[str, Any] | None = None,
    scheduled: dict[str, Any] | None = None,
) -> dict[str, Any]:
    state = (
        {"terminated": terminated}
        if terminated
        else {"waiting": waiting}
        if waiting
        else {"running": {}}
    )
    status: dict[str, Any] = {
        "phase": phase,
        "containerStatuses": [{"name": "trainer", "state": state}],
    }
    if scheduled:
        status = {"phase": "Pending", "conditions": [{"type": "PodScheduled", **scheduled}]}
    return {"metadata": {"name": "exp-train-abc"}, "status": status}


@pytest.mark.parametrize(
    ("the_job", "pods", "phase", "reason"),
    [
        (None, [], "Pending", "JobNotCreated"),
        (job(active=1), [pod("Succeeded", terminated={"exitCode": 0})], "Running", "PodRunning"),
        (job(), [], "Pending", "JobCreated"),
        (
            job(active=1),
            [pod("Pending", waiting={"reason": "ContainerCreating"})],
            "Pending",
            "JobCreated",
        ),
        (job(active=1), [pod()], "Running", "PodRunning"),
        (
            job(("Complete", "")),
            [pod("Succeeded", terminated={"exitCode": 0})],
            "Succeeded",
            "JobComplete",
        ),
        (
            job(("Failed", "BackoffLimitExceeded")),
            [pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})],
            "Failed",
            "OOMKilled",
        ),
        (job(("Failed", "DeadlineExceeded")), [], "Failed", "DeadlineExceeded"),
        (
            job(active=1),
            [pod("Pending", waiting={"reason": "ImagePullBackOff", "message": "not found"})],
            "Pending",
            "ImagePullBackOff",
        ),
        (
            job(active=1),
            [
                pod(
                    scheduled={
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes: Insufficient nvidia.com/gpu",
                    }
                )
            ],
            "Pending",
            "Unschedulable",
        ),
    ],
)
def test_training_state(
    the_job: dict[str, Any] | None, pods: list[dict[str, Any]], phase: str, reason: str
) -> None:
    state = training_state(the_job, pods)
    assert (state.phase, state.reason) == (phase, reason)


def test_failure_message_names_the_job_reason_and_the_pod_problem() -> None:
    state = training_state(
        job(("Failed", "BackoffLimitExceeded")),
        [pod("Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})],
    )
    assert state.message == (
        "BackoffLimitExceeded happened; pod exp-train-abc: container trainer terminated with "
        "exit code 137 (OOMKilled)"
    )
    assert state.completed_at == "2026-01-01T00:10:00Z"
    assert state.started_at == "2026-01-01T00:00:00Z"


def test_unschedulable_message_carries_the_schedulers_words() -> None:
    problem = pod_problem(
        [
            pod(
                scheduled={
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available",
                }
            )
        ]
    )
    assert problem == (
        "Unschedulable",
        "pod exp-train-abc cannot be scheduled: 0/3 nodes are available",
    )


def test_set_condition_keeps_transition_time_unless_status_flips() -> None:
    conds = set_condition([], "Validated", True, "Valid", "ok", now="t1", generation=1)
    assert conds == [
        {
            "type": "Validated",
            "status": "True",
            "reason": "Valid",
            "message": "ok",
            "lastTransitionTime": "t1",
            "observedGeneration": 1,
        }
    ]
    same = set_condition(conds, "Validated", True, "Valid", "still ok", now="t2", generation=2)
    assert condition(same, "Validated") == {
        **conds[0],
        "message": "still ok",
        "observedGeneration": 2,
    }
    flipped = set_condition(same, "Validated", False, "Invalid", "bad", now="t3")
    assert condition(flipped, "Validated")["lastTransitionTime"] == "t3"  # type: ignore[index]
    other = set_condition(flipped, "Running", True, "PodRunning", "", now="t4")
    assert [c["type"] for c in other] == ["Validated", "Running"]
