"""plan_pass: every decision of a reconcile pass, without a cluster."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kexp.api.reports import CheckpointsReport, ProgressReport, ResultsReport
from kexp.handlers.experiments import API_FUNCTIONS, Deferrals
from kexp.handlers.plan import (
    Observed,
    Plan,
    StorageError,
    may_defer_status,
    plan_pass,
    wanted_labels,
)
from kexp.render.settings import RenderSettings

SETTINGS = RenderSettings(trainer_image="kexp/trainer:test")
NOW = "2026-11-23T12:00:00Z"


def exp_body(
    name: str = "lr-high",
    *,
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    uid: str = "uid-1",
) -> dict[str, Any]:
    return {
        "apiVersion": "kexp.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {
            "name": name,
            "namespace": "research",
            "uid": uid,
            "generation": 1,
            "resourceVersion": "10",
            "creationTimestamp": "2026-11-23T11:00:00Z",
            "labels": labels or {},
        },
        "spec": spec
        if spec is not None
        else {
            "algorithm": "PPO",
            "tags": ["lr-ablation"],
            "environment": {"id": "CartPole-v1"},
            "hyperparameters": {"learningRate": 0.001},
            "training": {"totalSteps": 1000},
            "source": {
                "repository": "https://example.org/lab.git",
                "revision": "main",
                "commit": "a" * 40,
                "dirty": False,
            },
        },
        **({"status": status} if status is not None else {}),
    }


def plan(body: dict[str, Any], observed: Observed | None = None) -> Plan:
    return plan_pass(body, observed or Observed(), api=API_FUNCTIONS, settings=SETTINGS, now=NOW)


def cond(p: Plan, type_: str) -> dict[str, Any]:
    return next(c for c in p.status["conditions"] if c["type"] == type_)


def job(*conds: tuple[str, str], active: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "lr-high-train"},
        "status": {
            "active": active,
            "startTime": "2026-11-23T11:00:05Z",
            "completionTime": "2026-11-23T11:30:00Z"
            if conds and conds[0][0] == "Complete"
            else None,
            "conditions": [
                {
                    "type": t,
                    "status": "True",
                    "reason": r,
                    "message": f"{r}!",
                    "lastTransitionTime": NOW,
                }
                for t, r in conds
            ],
        },
    }


RUNNING_POD = {
    "metadata": {"name": "lr-high-train-x"},
    "status": {
        "phase": "Running",
        "startTime": "2026-11-23T11:00:06Z",
        "containerStatuses": [{"name": "trainer", "state": {"running": {}}}],
    },
}


def test_a_new_experiment_gets_its_children_and_a_pending_status() -> None:
    p = plan(exp_body())
    assert [c["kind"] for c in p.create] == ["ConfigMap", "Job"]
    assert p.labels == {"kexp.io/tag.lr-ablation": "true"}
    assert p.status["phase"] == "Pending"
    assert p.status["reason"] == "JobCreated"
    assert (p.status["algorithm"], p.status["environment"]) == ("PPO", "CartPole-v1")
    assert p.status["observedGeneration"] == 1
    assert p.status["jobs"] == {"train": "lr-high-train"}
    assert cond(p, "Validated")["status"] == "True"
    assert cond(p, "JobCreated")["status"] == "True"
    prov = p.status["provenance"]
    assert prov["gitCommit"] == "a" * 40
    assert prov["gitBranch"] == "main"
    assert prov["gitDirty"] is False
    assert prov["image"] == "kexp/trainer:test"
    assert prov["submittedAt"] == "2026-11-23T11:00:00Z"
    assert len(prov["configHash"]) == 16
    assert p.events == [("Normal", "JobCreated", "waiting for the trainer pod to start")]


def test_a_missing_s3_secret_holds_the_run_pending_until_the_secret_exists() -> None:
    missing = "Secret 'kexp-s3' (spec.storage.secretRef) not found in namespace 'research'"
    waiting = plan(exp_body(), Observed(storage_error=StorageError("S3SecretMissing", missing)))
    assert waiting.create == []  # a pod mounting a missing Secret would wait without a word
    assert (waiting.status["phase"], waiting.status["reason"]) == ("Pending", "S3SecretMissing")
    assert waiting.status["message"] == missing
    assert cond(waiting, "StorageReady")["status"] == "False"
    assert cond(waiting, "StorageReady")["message"] == missing
    assert waiting.events == [("Warning", "S3SecretMissing", missing)]
    assert "jobs" not in waiting.status
    # Asked again with no change: no second Event.
    again = plan(
        exp_body(status=waiting.status),
        Observed(storage_error=StorageError("S3SecretMissing", missing)),
    )
    assert again.events == []
    assert again.status == waiting.status
    # The user creates the Secret: the run goes on, and the condition says so.
    found = plan(exp_body(status=waiting.status))
    assert [c["kind"] for c in found.create] == ["ConfigMap", "Job"]
    assert (found.status["phase"], found.status["reason"]) == ("Pending", "JobCreated")
    assert cond(found, "StorageReady")["status"] == "True"
    # The same for a Secret the operator may not read (the chart's rbac.secretNames).
    forbidden = StorageError("S3SecretForbidden", "the operator may not read Secret 'team-s3'")
    denied = plan(exp_body(), Observed(storage_error=forbidden))
    assert (denied.status["reason"], denied.create) == ("S3SecretForbidden", [])
    assert denied.events == [("Warning", "S3SecretForbidden", forbidden.message)]
    # A run that never waited carries no StorageReady condition (one field fewer to write).
    assert all(c["type"] != "StorageReady" for c in plan(exp_body()).status["conditions"])


def test_phase_follows_the_job_through_running_to_succeeded() -> None:
    pending = plan(exp_body())
    body = exp_body(status=pending.status)

    running = plan(body, Observed(job=job(active=1), pods=[RUNNING_POD]))
    assert running.create == []
    assert running.status["phase"] == "Running"
    assert cond(running, "Running")["status"] == "True"
    assert running.status["provenance"]["startedAt"] == "2026-11-23T11:00:05Z"
    assert running.events == [("Normal", "PodRunning", "the trainer is running")]

    done = plan(exp_body(status=running.status), Observed(job=job(("Complete", ""))))
    assert done.status["phase"] == "Succeeded"
    assert cond(done, "Completed")["status"] == "True"
    assert cond(done, "Running")["status"] == "False"
    assert done.status["provenance"]["completedAt"] == "2026-11-23T11:30:00Z"


def test_a_second_pass_over_its_own_result_changes_nothing() -> None:
    first = plan(exp_body(), Observed(job=job(active=1), pods=[RUNNING_POD]))
    again = plan(
        exp_body(status=first.status, labels={"kexp.io/tag.lr-ablation": "true"}),
        Observed(job=job(active=1), pods=[RUNNING_POD]),
    )
    assert again.status == first.status
    assert again.events == []
    assert again.labels == {}
    assert again.create == []


def test_an_oom_killed_run_fails_with_a_warning_naming_it() -> None:
    oom = {
        "metadata": {"name": "lr-high-train-x"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }
            ],
        },
    }
    p = plan(
        exp_body(status=plan(exp_body()).status),
        Observed(job=job(("Failed", "BackoffLimitExceeded")), pods=[oom]),
    )
    assert p.status["phase"] == "Failed"
    assert p.status["reason"] == "OOMKilled"
    kind, reason, message = p.events[0]
    assert (kind, reason) == ("Warning", "OOMKilled")
    assert "exit code 137 (OOMKilled)" in message


def test_only_a_run_under_way_may_hold_its_status_while_the_operator_is_behind() -> None:
    created = plan(exp_body())
    assert may_defer_status(created.status, Observed())  # its Job is in the API server
    running = plan(exp_body(status=created.status), Observed(job=job(active=1), pods=[RUNNING_POD]))
    assert may_defer_status(running.status, Observed(job=job(active=1)))
    done = plan(exp_body(status=running.status), Observed(job=job(("Complete", ""))))
    assert not may_defer_status(done.status, Observed())  # a finished record is written at once
    missing = StorageError("S3SecretMissing", "Secret 'kexp-s3' not found")
    waiting = plan(exp_body(), Observed(storage_error=missing))
    assert not may_defer_status(waiting.status, Observed())  # no Job: nothing to recompute from
    invalid = plan(exp_body(spec={"algorithm": "PPO"}))
    assert invalid.status["phase"] == "Pending"
    assert not may_defer_status(invalid.status, Observed())  # the user must act on it
    spec = exp_body()["spec"]
    del spec["source"]["commit"]
    resolved = Observed(resolved_commit="b" * 40)
    # A branch resolved now could resolve to another commit after a restart.
    assert not may_defer_status(plan(exp_body(spec=spec), resolved).status, resolved)


def test_a_pass_over_a_held_status_goes_on_from_it() -> None:
    held = plan(exp_body()).status  # never written: the stored status is still empty
    running = plan(exp_body(status=held), Observed(job=job(active=1), pods=[RUNNING_POD]))
    # One Event per step: JobCreated was posted with the held status, not again.
    assert running.events == [("Normal", "PodRunning", "the trainer is running")]
    assert cond(running, "JobCreated") == next(
        c for c in held["conditions"] if c["type"] == "JobCreated"
    )


@pytest.mark.parametrize(
    ("threshold", "in_flight", "behind"),
    [(32, 33, True), (32, 32, False), (1, 2, True), (0, 1000, False)],
)
def test_the_operator_is_behind_with_more_passes_in_flight_than_the_threshold(
    threshold: int, in_flight: int, behind: bool
) -> None:
    assert Deferrals(threshold=threshold, in_flight=in_flight).behind() is behind


def test_unschedulable_pod_is_a_pending_warning() -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    }
    p = plan(exp_body(status=plan(exp_body()).status), Observed(job=job(active=1), pods=[pod]))
    assert p.status["phase"] == "Pending"
    assert p.events[0][:2] == ("Warning", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in p.status["message"]


def test_missing_template_is_a_validation_failure_naming_the_field() -> None:
    body = exp_body(spec={"templateRef": "ppo-highway", "training": {"totalSteps": 10}})
    p = plan(body)
    assert p.create == []
    assert p.status["phase"] == "Pending"
    assert cond(p, "Validated") | {"lastTransitionTime": NOW} == {
        "type": "Validated",
        "status": "False",
        "reason": "TemplateNotFound",
        "message": "spec.templateRef: ExperimentTemplate 'ppo-highway' not found in this namespace",
        "lastTransitionTime": NOW,
        "observedGeneration": 1,
    }
    assert p.events[0][:2] == ("Warning", "TemplateNotFound")
    assert p.labels == {"kexp.io/template": "ppo-highway"}


def test_template_is_merged_under_the_experiment() -> None:
    template = {
        "algorithm": "PPO",
        "environment": {"id": "highway-fast-v0", "numEnvs": 8},
        "hyperparameters": {"learningRate": 0.0003, "gamma": 0.99},
        "training": {"totalSteps": 100000},
    }
    body = exp_body(spec={"templateRef": "ppo-highway", "hyperparameters": {"learningRate": 0.001}})
    p = plan(body, Observed(template_spec=template))
    import yaml

    config = yaml.safe_load(p.create[0]["data"]["config.yaml"])
    assert config["spec"]["hyperparameters"] == {"learningRate": 0.001, "gamma": 0.99}
    assert config["spec"]["environment"]["numEnvs"] == 8
    assert p.status["phase"] == "Pending"


def test_invalid_merge_result_names_the_field() -> None:
    template = {"environment": {"id": "CartPole-v1"}, "training": {"totalSteps": 10}}
    body = exp_body(spec={"templateRef": "no-algo"})  # neither side names an algorithm
    p = plan(body, Observed(template_spec=template))
    validated = cond(p, "Validated")
    assert validated["status"] == "False"
    assert validated["reason"] == "InvalidSpec"
    assert "spec" in validated["message"]
    assert "algorithm" in validated["message"]
    assert p.create == []


def init_from(ref: str) -> dict[str, Any]:
    spec = copy.deepcopy(exp_body()["spec"])
    spec["initFrom"] = {"experiment": ref, "checkpoint": "best"}
    return spec


def test_init_from_waits_then_warm_starts_from_the_checkpoint() -> None:
    body = exp_body("rl", spec=init_from("bc"))
    missing = plan(body)
    assert missing.status["phase"] == "Waiting"
    assert missing.create == []
    assert "to be created" in missing.status["message"]
    assert missing.labels["kexp.io/init-from"] == "bc"

    bc_running = exp_body("bc", uid="uid-bc", status={"phase": "Running"})
    waiting = plan(body, Observed(experiments={"bc": bc_running}))
    assert waiting.status["phase"] == "Waiting"
    assert "it is Running" in waiting.status["message"]

    bc_done = exp_body("bc", uid="uid-bc", status={"phase": "Succeeded"})
    go = plan(
        exp_body("rl", spec=init_from("bc"), status=waiting.status),
        Observed(experiments={"bc": bc_done}),
    )
    uri = "s3://experiments/research/bc/uid-bc/checkpoints/best.pt"
    assert go.status["provenance"]["initFromCheckpoint"] == uri
    assert cond(go, "InitFromReady")["status"] == "True"
    env = go.create[-1]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "KEXP_INIT_CHECKPOINT", "value": uri} in env

    harvested = exp_body(
        "bc",
        uid="uid-bc",
        status={"phase": "Succeeded", "checkpoints": {"best": "s3://lab/custom/best.pt"}},
    )
    assert (
        plan(body, Observed(experiments={"bc": harvested})).status["provenance"][
            "initFromCheckpoint"
        ]
        == "s3://lab/custom/best.pt"
    )


def test_init_from_a_failed_experiment_fails() -> None:
    bc = exp_body("bc", status={"phase": "Failed"})
    p = plan(exp_body("rl", spec=init_from("bc")), Observed(experiments={"bc": bc}))
    assert p.status["phase"] == "Failed"
    assert p.status["reason"] == "InitFromFailed"


def test_init_from_cycle_is_refused_with_the_chain() -> None:
    a = exp_body("a", spec=init_from("b"))
    b = exp_body("b", spec=init_from("a"))
    p = plan(a, Observed(experiments={"a": a, "b": b}))
    assert p.status["phase"] == "Failed"
    validated = cond(p, "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "InitFromCycle")
    assert validated["message"] == "spec.initFrom.experiment forms a cycle: a -> b -> a"
    assert p.create == []


def test_finished_experiments_are_never_re_run() -> None:
    done = plan(exp_body(status=plan(exp_body()).status), Observed(job=job(("Complete", ""))))
    after = plan(exp_body(status=done.status), Observed(job=None))
    assert after.create == []
    assert after.status == done.status
    assert after.events == []


def test_a_job_deleted_mid_run_fails_the_experiment() -> None:
    running = plan(
        exp_body(status=plan(exp_body()).status), Observed(job=job(active=1), pods=[RUNNING_POD])
    )
    p = plan(exp_body(status=running.status), Observed(job=None))
    assert p.create == []
    assert (p.status["phase"], p.status["reason"]) == ("Failed", "JobDeleted")


def test_resolved_commit_is_recorded_and_errors_become_a_condition() -> None:
    spec = exp_body()["spec"]
    del spec["source"]["commit"]
    ok = plan(exp_body(spec=spec), Observed(resolved_commit="b" * 40))
    assert ok.status["provenance"]["gitCommit"] == "b" * 40
    assert cond(ok, "SourceResolved")["status"] == "True"
    bad = plan(exp_body(spec=spec), Observed(source_error="revision 'main' not found"))
    assert cond(bad, "SourceResolved")["message"] == "revision 'main' not found"
    assert [c["kind"] for c in bad.create] == ["ConfigMap", "Job"]  # provenance never blocks


@pytest.mark.parametrize(
    ("labels", "tags", "expected"),
    [
        ({}, ["a"], {"kexp.io/tag.a": "true"}),
        (
            {"kexp.io/tag.a": "true", "team": "x"},
            ["b"],
            {"kexp.io/tag.b": "true", "kexp.io/tag.a": None},
        ),
        ({"kexp.io/tag.a": "true"}, ["a"], {}),
    ],
)
def test_tag_labels_follow_the_tags(
    labels: dict[str, str], tags: list[str], expected: dict[str, str | None]
) -> None:
    assert wanted_labels({"labels": labels}, {"tags": tags}) == expected


def _done_with(report: ResultsReport | None, error: str | None = None) -> Plan:
    started = plan(exp_body())
    return plan(
        exp_body(status=started.status),
        Observed(job=job(("Complete", "")), results=report, results_error=error),
    )


def test_results_are_harvested_into_status_with_the_objective_as_score() -> None:
    spec = exp_body()["spec"]
    report = ResultsReport(
        outcome="succeeded",
        scores={"reward": 480.0, "reward_std": 12.0, "pdm_score": 0.8},
        step=1000,
        checkpoints=CheckpointsReport(
            latest="s3://b/p/checkpoints/step-1000.pt",
            best="s3://b/p/checkpoints/best.pt",
            best_step=900,
        ),
    )
    p = _done_with(report)
    assert p.status["phase"] == "Succeeded"
    assert p.status["results"] == {"pdm_score": 0.8, "reward": 480.0, "reward_std": 12.0}
    assert p.status["score"] == 0.8  # the default objective is pdm_score
    assert p.status["checkpoints"] == {
        "latest": "s3://b/p/checkpoints/step-1000.pt",
        "best": "s3://b/p/checkpoints/best.pt",
        "bestStep": 900,
    }
    assert cond(p, "Harvested")["status"] == "True"
    assert spec["algorithm"] == "PPO"


def test_a_failed_trainer_fails_the_experiment_with_its_reason() -> None:
    report = ResultsReport(
        outcome="failed",
        error="environment 'x' is not registered",
        error_field="spec.environment.id",
    )
    p = _done_with(report)
    assert (p.status["phase"], p.status["reason"]) == ("Failed", "TrainerFailed")
    assert p.status["message"] == "environment 'x' is not registered (spec.environment.id)"
    assert p.events[-1][:2] == ("Warning", "TrainerFailed")


def test_missing_results_leave_the_phase_and_say_why() -> None:
    p = _done_with(None, "no s3://experiments/research/lr-high/uid-1/results.json")
    assert p.status["phase"] == "Succeeded"
    harvested = cond(p, "Harvested")
    assert (harvested["status"], harvested["reason"]) == ("False", "ResultsMissing")
    assert "results" not in p.status


def test_results_in_status_are_bounded() -> None:
    report = ResultsReport(outcome="succeeded", scores={f"m{i:02d}": float(i) for i in range(50)})
    assert len(_done_with(report).status["results"]) == 32


def _running_with(progress: ProgressReport) -> Plan:
    started = plan(exp_body())
    return plan(
        exp_body(status=started.status),
        Observed(job=job(active=1), pods=[RUNNING_POD], progress=progress, stall_after_s=300),
    )


def test_progress_shows_step_percent_speed_and_eta() -> None:
    p = _running_with(
        ProgressReport(
            step=250, total_steps=1000, steps_per_second=50.0, updated_at="2026-11-23T11:59:00Z"
        )
    )
    assert p.status["progress"] == {
        "step": 250,
        "totalSteps": 1000,
        "percent": 25.0,
        "stepsPerSecond": 50.0,
        "updatedAt": "2026-11-23T11:59:00Z",
        "eta": "2026-11-23T11:59:15Z",
    }  # 750 steps at 50/s
    assert cond(p, "Stalled")["status"] == "False"


def test_a_heartbeat_older_than_the_threshold_marks_the_run_stalled() -> None:
    p = _running_with(
        ProgressReport(
            step=10, total_steps=1000, steps_per_second=0.0, updated_at="2026-11-23T11:50:00Z"
        )
    )  # 10 minutes before NOW
    stalled = cond(p, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "NoHeartbeat")
    assert stalled["message"] == "no progress heartbeat for 600s (last at step 10)"
    assert "eta" not in p.status["progress"]
