"""Sweeps in the operator, without a cluster: rendering, status from sweep.json and RayJobs,
and the decisions of a reconcile pass."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kexp.api.reports import CheckpointsReport, ResultsReport, SweepReport, TrialReport
from kexp.handlers.experiments import API_FUNCTIONS
from kexp.handlers.plan import KUBERAY_MISSING, Observed, Plan, plan_pass
from kexp.render.resolved import ResolvedExperiment
from kexp.render.settings import RenderSettings
from kexp.render.sweep import (
    cpu_count,
    local_concurrency,
    render_ray_job,
    render_sweep_job,
    scale_quantity,
    trial_resources,
)
from kexp.render.training import render_children
from kexp.status import sweep as sweeps

SETTINGS = RenderSettings(trainer_image="kexp/trainer:test")
NOW = "2026-11-23T12:00:00Z"
SWEEP: dict[str, Any] = {
    "numSamples": 8,
    "maxConcurrentTrials": 2,
    "scheduler": {"type": "asha"},
    "parameters": {"learningRate": {"logUniform": [1.0e-5, 1.0e-3]}},
}


def spec(**sweep: Any) -> dict[str, Any]:
    return {
        "algorithm": "PPO",
        "environment": {"id": "CartPole-v1"},
        "training": {"totalSteps": 1000},
        "resources": {"cpu": "500m", "memory": "2Gi", "gpus": 0},
        "objective": {"metric": "reward", "mode": "max"},
        "sweep": {**SWEEP, **sweep},
    }


def resolved(s: dict[str, Any]) -> ResolvedExperiment:
    return ResolvedExperiment("sw", "research", "uid-1", API_FUNCTIONS.validate(s))


# ---- rendering --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("quantity", "factor", "expected"),
    [("4Gi", 3, "12Gi"), ("500m", 2, "1000m"), ("1.5", 2, "3"), ("2", 1, "2"), (4, 2, "8")],
)
def test_quantities_scale_in_their_own_unit(quantity: Any, factor: int, expected: str) -> None:
    assert scale_quantity(quantity, factor) == expected


def test_trial_resources_and_local_concurrency() -> None:
    s = spec()
    assert cpu_count("500m") == 0.5
    assert trial_resources(s) == {"cpu": 0.5, "gpu": 0.0}
    assert local_concurrency(s) == 2
    assert local_concurrency({"sweep": {"parameters": {}}}) == 1


def test_a_sweep_renders_its_config_and_a_job_that_runs_the_tune_entry_point() -> None:
    exp = resolved(spec())
    config_map, job = render_children(exp, SETTINGS)
    assert config_map["kind"] == "ConfigMap"
    assert job["metadata"]["name"] == "sw-sweep"
    assert job["metadata"]["labels"]["kexp.io/role"] == "sweep"
    pod = job["spec"]["template"]
    assert pod["metadata"]["labels"]["kexp.io/role"] == "sweep"
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "kexp_trainers.tune"]
    # One trial's resources times maxConcurrentTrials.
    assert container["resources"] == {
        "requests": {"cpu": "1000m", "memory": "4Gi"},
        "limits": {"memory": "4Gi"},
    }
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HOME"] == "/tmp"
    assert env["KEXP_S3_PREFIX"] == "research/sw/uid-1/"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_a_custom_command_never_replaces_the_sweep_entry_point() -> None:
    s = spec()
    s["trainer"] = {"command": ["python", "-m", "lab.train"], "args": ["--x"]}
    container = render_sweep_job(resolved(s), SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "kexp_trainers.tune"]
    assert container["args"] == []


def test_a_sweep_on_a_ray_cluster_renders_a_rayjob() -> None:
    s = spec(rayCluster={"workers": 3, "gpusPerWorker": 2, "memoryPerWorker": "24Gi"})
    s["retry"] = {"backoffLimit": 1, "activeDeadlineSeconds": 3600}
    children = render_children(resolved(s), SETTINGS)
    assert [c["kind"] for c in children] == ["ConfigMap", "RayJob"]
    ray = children[1]
    assert ray["apiVersion"] == "ray.io/v1"
    assert ray["metadata"]["name"] == "sw-sweep"
    assert ray["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    body = ray["spec"]
    assert body["entrypoint"] == "python -m kexp_trainers.tune"
    assert body["shutdownAfterJobFinishes"] is True
    assert (body["backoffLimit"], body["activeDeadlineSeconds"]) == (1, 3600)
    head = body["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the driver runs no trials
    head_container = head["template"]["spec"]["containers"][0]
    assert "command" not in head_container  # KubeRay supplies `ray start`
    assert {p["containerPort"] for p in head_container["ports"]} == {6379, 8265, 10001, 9090}
    mounts = {m["mountPath"] for m in head_container["volumeMounts"]}
    assert {"/etc/kexp", "/var/run/secrets/kexp/s3"} <= mounts
    (group,) = body["rayClusterSpec"]["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (3, 3, 3)
    worker = group["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"] == {
        "cpu": "500m",
        "memory": "24Gi",
        "nvidia.com/gpu": "2",
    }
    assert worker["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "tolerations" not in head["template"]["spec"]
    assert worker["securityContext"]["runAsNonRoot"] is True


def test_the_rayjob_uses_the_ray_image_when_given() -> None:
    s = spec(rayCluster={"image": "lab/ray:2"})
    job = render_ray_job(resolved(s), SETTINGS)
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "lab/ray:2"


# ---- status from sweep.json ---------------------------------------------------------------------
def trial(name: str, state: str, score: float | None = None, **extra: Any) -> TrialReport:
    return TrialReport(name=name, state=state, score=score, **extra)  # type: ignore[arg-type]


def report(*trials: TrialReport, mode: str = "max", outcome: str = "running") -> SweepReport:
    return SweepReport(
        outcome=outcome,  # type: ignore[arg-type]
        metric="reward",
        mode=mode,  # type: ignore[arg-type]
        planned=len(trials),
        trials=list(trials),
        updated_at="2026-11-23T11:59:50Z",
    )


def test_completed_trials_outrank_the_ones_stopped_early_whatever_their_score() -> None:
    r = report(
        trial("a", "stoppedEarly", 300.0),
        trial("b", "completed", 100.0),
        trial("c", "completed", 200.0),
        trial("d", "failed", error="boom"),
        trial("e", "running", 50.0),
    )
    assert [t.name for t in sweeps.ranked(r.trials, "max")] == ["c", "b", "a", "e"]
    assert [t.name for t in sweeps.ranked(r.trials, "min")] == ["b", "c", "e", "a"]
    status = sweeps.sweep_status(r)
    assert status["bestTrial"]["name"] == "c"
    assert {k: status[k] for k in ("trials", "running", "completed", "stoppedEarly", "failed")} == {
        "trials": 5,
        "running": 1,
        "completed": 2,
        "stoppedEarly": 1,
        "failed": 1,
    }
    assert [t["name"] for t in status["leaderboard"]] == ["c", "b", "a", "e"]
    assert sweeps.sweep_progress(r) == {"updatedAt": "2026-11-23T11:59:50Z", "percent": 80.0}


def test_the_leaderboard_is_bounded() -> None:
    r = report(*(trial(f"t{i:03d}", "completed", float(i)) for i in range(50)))
    status = sweeps.sweep_status(r)
    assert len(status["leaderboard"]) == 20
    assert status["leaderboard"][0]["name"] == "t049"
    assert status["trials"] == 50


def test_a_sweep_fails_only_when_every_trial_failed() -> None:
    some = report(trial("a", "failed", error="ValueError: x"), trial("b", "completed", 1.0))
    assert sweeps.failure_message(some) is None
    every = report(trial("a", "failed", error="ValueError: x"), trial("b", "failed"))
    assert sweeps.failure_message(every) == (
        "all 2 trial(s) failed; first error: trial a: ValueError: x"
    )
    itself = report(outcome="failed").model_copy(update={"error": "spec.sweep: bad"})
    assert sweeps.failure_message(itself) == "spec.sweep: bad"


@pytest.mark.parametrize(
    ("status", "phase", "reason"),
    [
        (None, "Pending", "RayClusterStarting"),
        ({"jobDeploymentStatus": "Initializing"}, "Pending", "RayClusterStarting"),
        (
            {"jobDeploymentStatus": "Running", "jobStatus": "PENDING"},
            "Pending",
            "RayClusterStarting",
        ),
        ({"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}, "Running", "RayJobRunning"),
        (
            {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"},
            "Succeeded",
            "RayJobComplete",
        ),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED"}, "Failed", "RayJobFailed"),
        (
            {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "message": "late"},
            "Failed",
            "DeadlineExceeded",
        ),
    ],
)
def test_a_rayjobs_status_maps_onto_a_phase(
    status: dict[str, Any] | None, phase: str, reason: str
) -> None:
    ray_job = {"metadata": {"name": "sw-sweep"}, "status": status or {}}
    state = sweeps.ray_job_state(ray_job)
    assert (state.phase, state.reason) == (phase, reason)


# ---- the reconcile pass -----------------------------------------------------------------------
def body(s: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "sw",
            "namespace": "research",
            "uid": "uid-1",
            "generation": 1,
            "resourceVersion": "5",
            "creationTimestamp": "2026-11-23T11:00:00Z",
        },
        "spec": s,
        **({"status": status} if status else {}),
    }


def plan(b: dict[str, Any], observed: Observed | None = None) -> Plan:
    return plan_pass(b, observed or Observed(), api=API_FUNCTIONS, settings=SETTINGS, now=NOW)


def cond(p: Plan, type_: str) -> dict[str, Any]:
    return next(c for c in p.status["conditions"] if c["type"] == type_)


def sweep_job(*conditions: str, active: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "sw-sweep"},
        "status": {
            "active": active,
            "startTime": "2026-11-23T11:00:05Z",
            "conditions": [{"type": c, "status": "True", "reason": c} for c in conditions],
        },
    }


RUNNING_POD = {
    "metadata": {"name": "sw-sweep-x"},
    "status": {"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {}}]},
}


def test_the_first_pass_of_a_sweep_creates_its_config_and_sweep_job() -> None:
    p = plan(body(spec()))
    assert [c["kind"] for c in p.create] == ["ConfigMap", "Job"]
    assert p.create[1]["metadata"]["name"] == "sw-sweep"
    assert p.status["jobs"] == {"train": "sw-sweep"}
    assert cond(p, "JobCreated")["message"] == "sweep Job sw-sweep"


def test_a_ray_sweep_waits_for_kuberay_when_the_cluster_lacks_it() -> None:
    p = plan(body(spec(rayCluster={"workers": 2})), Observed(kuberay=False))
    assert p.create == []
    assert (p.status["phase"], p.status["reason"]) == ("Pending", "KubeRayMissing")
    assert p.status["message"] == KUBERAY_MISSING
    assert p.events == [("Warning", "KubeRayMissing", KUBERAY_MISSING)]


def test_a_ray_sweep_creates_a_rayjob_and_follows_it() -> None:
    first = plan(body(spec(rayCluster={"workers": 2})), Observed(kuberay=True))
    assert [c["kind"] for c in first.create] == ["ConfigMap", "RayJob"]
    assert cond(first, "JobCreated")["message"] == "RayJob sw-sweep"
    created = body(spec(rayCluster={"workers": 2}), first.status)
    running = {"status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}}
    p = plan(created, Observed(ray_job=running, sweep=report(trial("a", "running"))))
    assert p.create == []
    assert (p.status["phase"], p.status["reason"]) == ("Running", "RayJobRunning")
    assert p.status["sweep"]["running"] == 1
    gone = plan(created, Observed(ray_job=None))
    assert (gone.status["phase"], gone.status["reason"]) == ("Failed", "JobDeleted")
    assert gone.status["message"] == "the RayJob sw-sweep was deleted"


def test_a_running_sweep_shows_its_trials_and_progress_and_stalls_without_reports() -> None:
    created = body(spec(), plan(body(spec())).status)
    r = report(trial("a", "completed", 5.0), trial("b", "running", 1.0))
    p = plan(created, Observed(job=sweep_job(active=1), pods=[RUNNING_POD], sweep=r))
    assert p.status["phase"] == "Running"
    assert p.status["message"] == sweeps.SWEEP_RUNNING_MESSAGE
    assert p.status["sweep"]["bestTrial"]["name"] == "a"
    assert p.status["progress"]["percent"] == 50.0
    assert cond(p, "Stalled")["status"] == "False"
    old = r.model_copy(update={"updated_at": "2026-11-23T11:00:00Z"})
    stalled = plan(
        created,
        Observed(job=sweep_job(active=1), pods=[RUNNING_POD], sweep=old, stall_after_s=600),
    )
    assert cond(stalled, "Stalled")["status"] == "True"
    assert "no sweep report for 3600s" in cond(stalled, "Stalled")["message"]


def test_a_finished_sweep_harvests_the_best_trial_and_its_leaderboard() -> None:
    created = body(spec(), plan(body(spec())).status)
    best = trial(
        "a",
        "completed",
        7.0,
        scores={"reward": 7.0},
        checkpoint="s3://experiments/research/sw/uid-1/trials/a/checkpoints/best.pt",
    )
    final = report(best, trial("b", "stoppedEarly", 2.0), outcome="succeeded")
    results = ResultsReport(
        outcome="succeeded",
        scores={"reward": 7.0},
        checkpoints=CheckpointsReport(best=best.checkpoint, best_step=1000),
    )
    p = plan(
        created,
        Observed(job=sweep_job("Complete"), sweep=final, results=results),
    )
    assert (p.status["phase"], p.status["reason"]) == ("Succeeded", "JobComplete")
    assert p.status["message"] == (
        "2 trial(s): 1 completed, 1 stopped early, 0 failed; best a (reward 7)"
    )
    assert p.status["score"] == 7.0
    assert p.status["checkpoints"]["best"] == best.checkpoint
    assert p.status["sweep"]["leaderboard"][0]["name"] == "a"
    assert cond(p, "TrialsSucceeded")["status"] == "True"
    assert cond(p, "Completed")["status"] == "True"


def test_a_sweep_whose_every_trial_failed_is_failed_with_the_first_error() -> None:
    created = body(spec(), plan(body(spec())).status)
    final = report(
        trial("a", "failed", error="ZeroDivisionError: division by zero"),
        trial("b", "failed", error="RuntimeError: later"),
        outcome="failed",
    )
    results = ResultsReport(outcome="failed", error=sweeps.failure_message(final))
    p = plan(created, Observed(job=sweep_job("Failed"), sweep=final, results=results))
    assert (p.status["phase"], p.status["reason"]) == ("Failed", "AllTrialsFailed")
    message = "all 2 trial(s) failed; first error: trial a: ZeroDivisionError: division by zero"
    assert p.status["message"] == message
    assert cond(p, "TrialsSucceeded") | {"lastTransitionTime": None} == {
        "type": "TrialsSucceeded",
        "status": "False",
        "reason": "AllTrialsFailed",
        "message": message,
        "lastTransitionTime": None,
        "observedGeneration": 1,
    }
    assert cond(p, "Completed")["status"] == "False"
    assert ("Warning", "AllTrialsFailed", message) in p.events


def test_a_spec_that_sweeps_a_custom_trainer_is_invalid() -> None:
    s = copy.deepcopy(spec())
    s.update({"algorithm": "Custom", "trainer": {"image": "lab/x:1"}})
    p = plan(body(s))
    assert p.status["reason"] == "InvalidSpec"
    assert "spec.sweep: a sweep runs kexp's built-in algorithms" in p.status["message"]
