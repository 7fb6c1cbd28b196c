"""Sweeps on the real stack: a real Ray Tune sweep harvested into status, crashing trials,
a resumed sweep, and the RayJob of a sweep on a Ray cluster (KubeRay's CRDs installed).

kwok's nodes run no containers: the sweep Job's pod is run as a local process with the pod's
command, environment and mounted files (``kexp.dev.podrunner``), and the simulated pod is then
ended the way the process ended. KubeRay's operator is not run either (it would have no
containers to start); its CRDs are, so the API server validates and stores the RayJob, and
the test writes the RayJob's status the way KubeRay would.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from minio import Minio

from kexp.api import contract
from kexp.api.reports import ResultsReport, SweepReport, TrialReport
from kexp.dev.podrunner import end_simulated_pods, run_pod_as_process
from kexp.render.resolved import ResolvedExperiment
from kexp.render.settings import RenderSettings
from kexp.render.sweep import render_ray_job
from tests.conftest import OperatorProcess
from tests.integration.test_operator import Lab, experiment
from tests.waiting import wait_until

pytestmark = pytest.mark.stack


def sweep_experiment(name: str, sweep: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A short PPO run on CartPole, swept; the simulated pod lives until the test ends it."""
    fields: dict[str, Any] = {
        "annotations": {"sim.kexp.io/run-for": "600s"},
        "environment": {"id": "CartPole-v1", "numEnvs": 2},
        "hyperparameters": {"batchSize": 64, "nEpochs": 2},
        "training": {"totalSteps": 2048, "seed": 1},
        "evaluation": {"episodes": 3},
        "objective": {"metric": "reward", "mode": "max"},
        "retry": {"backoffLimit": 0},
        "sweep": sweep,
    }
    return experiment(name, **{**fields, **spec})


@pytest.fixture
def lab(kube: Any, namespace: str, operator: OperatorProcess) -> Lab:
    return Lab(kube, namespace)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sweep_job(lab: Lab, name: str) -> dict[str, Any]:
    job = wait_until(
        lambda: next((j for j in lab.jobs(name) if j.metadata.name == f"{name}-sweep"), None),
        what=f"{name}'s sweep Job",
    )
    body: dict[str, Any] = client.ApiClient().sanitize_for_serialization(job)
    return body


def run_sweep_pod(
    lab: Lab, kube: Any, name: str, workdir: Path, metrics_port: int = 0
) -> subprocess.Popen[bytes]:
    lab.wait_phase(name, "Running")
    return run_pod_as_process(
        kube, lab.ns, sweep_job(lab, name), workdir, workdir / "sweep.log", metrics_port
    )


def finish(lab: Lab, kube: Any, name: str, proc: subprocess.Popen[bytes], log: Path) -> int:
    """Wait for the sweep process, then end its simulated pod the same way."""
    code = proc.wait(timeout=400)
    end_simulated_pods(kube, lab.ns, f"{name}-sweep", code)
    return code


def s3_json(s3: Minio, key: str) -> dict[str, Any]:
    resp = s3.get_object(contract.DEFAULT_BUCKET, key)
    try:
        data: dict[str, Any] = json.loads(resp.read())
    finally:
        resp.close()
        resp.release_conn()
    return data


def test_a_sweep_runs_ray_tune_stops_trials_early_survives_crashes_and_ends_with_the_best_trial(
    lab: Lab, kube: Any, s3: Minio, tmp_path: Path
) -> None:
    # nSteps 0 makes PPO divide by zero: half the trials crash, for real, in the trainer.
    created = lab.create(
        sweep_experiment(
            "tune",
            {
                "numSamples": 4,
                "maxConcurrentTrials": 2,
                "scheduler": {"type": "asha", "gracePeriod": 1, "reductionFactor": 2},
                "parameters": {
                    "learningRate": {"logUniform": [3.0e-4, 3.0e-2]},
                    "nSteps": {"grid": [64, 0]},
                },
            },
        )
    )
    job = sweep_job(lab, "tune")
    pod = job["spec"]["template"]["spec"]["containers"][0]
    assert pod["command"] == ["python", "-m", "kexp_trainers.tune"]
    assert pod["resources"]["requests"]["cpu"] == "2"  # one trial's CPU x maxConcurrentTrials
    port = free_port()
    proc = run_sweep_pod(lab, kube, "tune", tmp_path, metrics_port=port)
    log = tmp_path / "sweep.log"
    try:
        # The status follows the sweep while it runs, and the trials' metrics are served.
        running = wait_until(
            lambda: s if (s := lab.status("tune").get("sweep") or {}).get("trials") else None,
            timeout_s=120,
            what="status.sweep while the sweep runs",
        )
        assert running["planned"] == 8
        assert lab.status("tune")["phase"] == "Running"

        def scraped() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                return None
            return text if 'kexp_trainer_steps_total{experiment="tune"' in text else None

        metrics = wait_until(scraped, timeout_s=120, what="trial metrics on the sweep's port")
        assert f'namespace="{lab.ns}",trial="' in metrics
    finally:
        code = finish(lab, kube, "tune", proc, log)
    assert code == 0, log.read_text()[-4000:]
    done = lab.wait_phase("tune", "Succeeded", timeout_s=60)

    sweep = done["sweep"]
    assert sweep["trials"] == 8
    assert sweep["failed"] == 4
    assert sweep["stoppedEarly"] >= 1, sweep
    assert sweep["completed"] >= 1
    assert sweep["completed"] + sweep["stoppedEarly"] + sweep["failed"] == 8
    best = sweep["bestTrial"]
    assert best["state"] == "completed"
    assert best["hyperparameters"]["nSteps"] == 64
    assert best["score"] == done["score"] == done["results"]["reward"]
    board = sweep["leaderboard"]
    assert board[0] == best
    completed_scores = [t["score"] for t in board if t["state"] == "completed"]
    assert completed_scores == sorted(completed_scores, reverse=True)
    assert all(t["state"] != "failed" for t in board)
    prefix = contract.s3_prefix(lab.ns, "tune", created["metadata"]["uid"])
    trial_prefix = contract.trial_prefix(prefix, best["name"])
    assert best["checkpoint"] == f"s3://{contract.DEFAULT_BUCKET}/{trial_prefix}checkpoints/best.pt"
    assert done["checkpoints"]["best"] == best["checkpoint"]
    conditions = {c["type"]: c for c in done["conditions"]}
    assert conditions["TrialsSucceeded"]["status"] == "True"
    assert conditions["Harvested"]["status"] == "True"
    assert done["progress"]["percent"] == 100.0
    assert done["jobs"]["train"] == "tune-sweep"

    # Every trial is in sweep.json, the crashed ones with the trainer's own error.
    report = SweepReport.model_validate(s3_json(s3, prefix + contract.SWEEP_FILE))
    failed = [t for t in report.trials if t.state == "failed"]
    assert {t.hyperparameters["nSteps"] for t in failed} == {0}
    assert all(t.error and "ZeroDivisionError" in t.error for t in failed), failed
    # Each trial wrote its own run files under trials/<trial>/, as a single run would.
    results = ResultsReport.model_validate(s3_json(s3, trial_prefix + contract.RESULTS_FILE))
    assert results.outcome == "succeeded"
    assert results.scores["reward"] == best["score"]
    for crashed in failed:
        trial_results = s3_json(
            s3, contract.trial_prefix(prefix, crashed.name) + contract.RESULTS_FILE
        )
        assert trial_results["outcome"] == "failed"
    tune_state = [
        o.object_name for o in s3.list_objects(contract.DEFAULT_BUCKET, prefix + "tune/", True)
    ]
    assert any("experiment_state" in key for key in tune_state), tune_state


def test_a_sweep_whose_every_trial_fails_ends_failed_with_the_first_error(
    lab: Lab, kube: Any, tmp_path: Path
) -> None:
    lab.create(
        sweep_experiment(
            "doomed",
            {
                "numSamples": 1,
                "maxConcurrentTrials": 2,
                "parameters": {
                    "learningRate": {"choice": [1.0e-3]},
                    "nSteps": {"grid": [0, 0]},
                },
            },
        )
    )
    proc = run_sweep_pod(lab, kube, "doomed", tmp_path)
    code = finish(lab, kube, "doomed", proc, tmp_path / "sweep.log")
    assert code == 1, (tmp_path / "sweep.log").read_text()[-4000:]
    failed = lab.wait_phase("doomed", "Failed", timeout_s=60)
    assert failed["reason"] == "AllTrialsFailed"
    assert failed["message"].startswith("all 2 trial(s) failed; first error: trial ")
    assert failed["message"].count("first error") == 1
    assert "ZeroDivisionError" in failed["message"]
    condition = next(c for c in failed["conditions"] if c["type"] == "TrialsSucceeded")
    assert condition["status"] == "False"
    assert condition["message"] == failed["message"]
    assert failed["sweep"]["failed"] == 2
    assert "bestTrial" not in failed["sweep"]


def test_a_parameter_the_algorithm_lacks_fails_the_sweep_before_any_trial(
    lab: Lab, kube: Any, tmp_path: Path
) -> None:
    lab.create(
        sweep_experiment("typo", {"parameters": {"learningrate": {"choice": [1.0e-3, 1.0e-4]}}})
    )
    proc = run_sweep_pod(lab, kube, "typo", tmp_path)
    assert finish(lab, kube, "typo", proc, tmp_path / "sweep.log") == 2
    failed = lab.wait_phase("typo", "Failed", timeout_s=60)
    assert failed["reason"] == "TrainerFailed"
    assert "spec.sweep.parameters.learningrate: not a PPO hyperparameter" in failed["message"]
    assert "(run_trial" not in (tmp_path / "sweep.log").read_text()  # no trial started


def test_a_restarted_sweep_resumes_from_its_tune_state_in_s3(
    lab: Lab, kube: Any, s3: Minio, tmp_path: Path
) -> None:
    created = lab.create(
        sweep_experiment(
            "resume",
            {
                "numSamples": 4,
                "maxConcurrentTrials": 1,
                "parameters": {"learningRate": {"logUniform": [3.0e-4, 3.0e-2]}},
            },
            # Long enough to be caught mid-sweep; checkpoints on the way to resume from.
            training={"totalSteps": 16384, "seed": 1, "checkpointEvery": 4096},
        )
    )
    prefix = contract.s3_prefix(lab.ns, "resume", created["metadata"]["uid"])
    first = run_sweep_pod(lab, kube, "resume", tmp_path / "first")

    def mid_sweep() -> list[TrialReport] | None:
        """One trial done, the next one past a checkpoint: a good moment to die."""
        try:
            report = SweepReport.model_validate(s3_json(s3, prefix + contract.SWEEP_FILE))
        except Exception:
            return None
        done = [t for t in report.trials if t.state == "completed"]
        running = [t for t in report.trials if t.state == "running"]
        if not done or len(done) == 4 or not running:
            return None
        folder = contract.trial_prefix(prefix, running[0].name) + "checkpoints/step-"
        saved = list(s3.list_objects(contract.DEFAULT_BUCKET, folder))
        return report.trials if saved else None

    before = wait_until(mid_sweep, timeout_s=180, what="a trial done and the next checkpointed")
    first.kill()  # the pod dies mid-sweep (node lost, evicted, OOM)
    first.wait()
    second = run_pod_as_process(
        kube, lab.ns, sweep_job(lab, "resume"), tmp_path / "second", tmp_path / "second.log"
    )
    code = finish(lab, kube, "resume", second, tmp_path / "second.log")
    log = (tmp_path / "second.log").read_text()
    assert code == 0, log[-4000:]
    assert "resuming the sweep from its Tune state" in log
    # The trial that was cut off continues from its last checkpoint, as a single run does.
    assert "resumed from " in log
    done = lab.wait_phase("resume", "Succeeded", timeout_s=60)
    assert done["sweep"]["trials"] == 4
    assert done["sweep"]["completed"] == 4
    report = SweepReport.model_validate(s3_json(s3, prefix + contract.SWEEP_FILE))
    after = {t.name: t for t in report.trials}
    for trial in before:
        # Same trials (Tune's ids survive the restore), same sampled values; what had
        # finished is not trained again (Tune saves its state every ~10 s, so a trial that
        # finished just before the kill may run again, from its last checkpoint).
        assert after[trial.name].hyperparameters == trial.hyperparameters
        if trial.state == "completed":
            assert after[trial.name].score == trial.score
            assert after[trial.name].step == 16384
            final = f"trials/{trial.name}/checkpoints/step-16384.pt at step 16384"
            assert f"trial {trial.name}: " not in log or final in log


# ---- on a Ray cluster (KubeRay) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def kuberay_crds(kube: Any) -> None:
    """KubeRay's pinned CRDs (fetched through the Go module proxy, cached), installed."""
    from kexp.dev.kuberay import install_kuberay_crds

    install_kuberay_crds(kube)


RAY_SWEEP: dict[str, Any] = {
    "numSamples": 16,
    "maxConcurrentTrials": 4,
    "searchAlgorithm": "tpe",
    "scheduler": {"type": "asha"},
    "parameters": {"learningRate": {"logUniform": [1.0e-5, 1.0e-3]}},
    "rayCluster": {"workers": 2, "gpusPerWorker": 1},
}


def _subset(rendered: Any, stored: Any, path: str = "") -> None:
    """Everything rendered survives in the stored object (nothing was pruned)."""
    if isinstance(rendered, dict):
        assert isinstance(stored, dict), path
        for key, value in rendered.items():
            assert key in stored, f"{path}.{key} was pruned"
            _subset(value, stored[key], f"{path}.{key}")
    elif isinstance(rendered, list):
        assert isinstance(stored, list), path
        assert len(stored) == len(rendered), path
        for i, (a, b) in enumerate(zip(rendered, stored, strict=True)):
            _subset(a, b, f"{path}[{i}]")
    else:
        assert str(rendered) == str(stored), f"{path}: {rendered!r} != {stored!r}"


def test_the_rendered_rayjob_is_valid_for_kuberays_schema(
    kube: Any, namespace: str, kuberay_crds: None
) -> None:
    spec = sweep_experiment("ray", RAY_SWEEP)["spec"]
    exp = ResolvedExperiment("ray", namespace, "0000-uid", spec)
    rendered = render_ray_job(exp, RenderSettings(trainer_image="kexp/trainer:test"))
    rendered["metadata"].pop("ownerReferences")  # no such Experiment; GC would delete it
    custom = client.CustomObjectsApi(kube)
    stored = custom.create_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayjobs", rendered, field_validation="Strict"
    )
    _subset(rendered["spec"], stored["spec"], "spec")
    workers = stored["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


def test_a_sweep_on_a_ray_cluster_runs_as_a_rayjob_owned_by_the_experiment(
    lab: Lab, kube: Any, s3: Minio, kuberay_crds: None
) -> None:
    created = lab.create(sweep_experiment("onray", RAY_SWEEP))
    custom = client.CustomObjectsApi(kube)
    ray_job = wait_until(
        lambda: next(
            iter(
                custom.list_namespaced_custom_object(
                    "ray.io", "v1", lab.ns, "rayjobs", label_selector="kexp.io/experiment=onray"
                )["items"]
            ),
            None,
        ),
        what="the RayJob",
    )
    assert ray_job["metadata"]["name"] == "onray-sweep"
    owner = ray_job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Experiment",
        "onray",
        created["metadata"]["uid"],
    )
    assert ray_job["spec"]["entrypoint"] == "python -m kexp_trainers.tune"
    assert lab.jobs("onray") == []  # no one-pod sweep Job beside it
    pending = wait_until(
        lambda: s if (s := lab.status("onray")).get("reason") == "RayClusterStarting" else None,
        what="Pending while the Ray cluster starts",
    )
    assert pending["phase"] == "Pending"
    assert pending["jobs"] == {"train": "onray-sweep"}

    def kuberay_reports(status: dict[str, Any]) -> None:
        # What KubeRay's operator writes; the operator watches the RayJob for it.
        custom.patch_namespaced_custom_object_status(
            "ray.io", "v1", lab.ns, "rayjobs", "onray-sweep", {"status": status}
        )

    kuberay_reports(
        {
            "jobDeploymentStatus": "Running",
            "jobStatus": "RUNNING",
            "startTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    lab.wait_phase("onray", "Running")
    prefix = contract.s3_prefix(lab.ns, "onray", created["metadata"]["uid"])
    trial = TrialReport(
        name="a1b2c_00000",
        state="completed",
        hyperparameters={"learningRate": 1.0e-4},
        score=0.8,
        scores={"reward": 0.8},
        step=2048,
        checkpoint=f"s3://experiments/{prefix}trials/a1b2c_00000/checkpoints/best.pt",
    )
    report = SweepReport(
        outcome="running",
        metric="reward",
        planned=16,
        trials=[trial, TrialReport(name="a1b2c_00001", state="running")],
        updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    data = report.to_json().encode()
    s3.put_object(contract.DEFAULT_BUCKET, prefix + "sweep.json", io.BytesIO(data), len(data))
    running = wait_until(
        lambda: s if (s := lab.status("onray").get("sweep") or {}).get("trials") == 2 else None,
        what="status.sweep from sweep.json while the RayJob runs",
    )
    assert running["bestTrial"]["name"] == "a1b2c_00000"
    final = report.model_copy(update={"outcome": "succeeded", "trials": [trial]})
    data = final.to_json().encode()
    s3.put_object(contract.DEFAULT_BUCKET, prefix + "sweep.json", io.BytesIO(data), len(data))
    results = ResultsReport(outcome="succeeded", scores={"reward": 0.8}, step=2048).to_json()
    s3.put_object(
        contract.DEFAULT_BUCKET, prefix + "results.json", io.BytesIO(results.encode()), len(results)
    )
    kuberay_reports({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})
    done = lab.wait_phase("onray", "Succeeded")
    assert done["score"] == 0.8
    assert done["sweep"]["bestTrial"]["checkpoint"] == trial.checkpoint
    assert done["reason"] == "RayJobComplete"
