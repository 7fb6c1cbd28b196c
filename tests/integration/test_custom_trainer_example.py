"""examples/custom-trainer follows the trainer contract: run with a pod's environment against the
real MinIO, what it writes is accepted by the operator's own readers and harvested by the real
operator.

The example's Experiment is submitted with the CLI (its command pointed at the script in this
checkout instead of the image's /app/train.py); ``kexp dev run-trainer`` then runs the Job's
pod as a local process, with exactly the pod's environment, mounted config and S3 credential
files. kwok keeps the simulated pod running for a few seconds, long enough for the script.
"""

from __future__ import annotations

import copy
import csv
import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from kubernetes import client
from minio import Minio

from kexp.api import contract
from kexp.api.models import Experiment
from kexp.api.validation import validate_spec
from kexp.cli.main import cli
from kexp.dev.stack import Stack
from kexp.storage.runfiles import read_progress, read_results, read_text
from kexp.storage.s3 import read_object
from tests.conftest import OperatorProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "custom-trainer"
MANIFEST = yaml.safe_load((EXAMPLE / "experiment.yaml").read_text())


class Runner:
    def __init__(self, stack: Stack, kube: Any, namespace: str) -> None:
        self.stack = stack
        self.ns = namespace
        self.custom = client.CustomObjectsApi(kube)

    def kexp(self, *args: str) -> Result:
        base = ["--kubeconfig", str(self.stack.kubeconfig), "-n", self.ns]
        argv = [args[0], *base, *args[1:]] if args[0] != "dev" else list(args)
        return CliRunner().invoke(cli, argv, catch_exceptions=False)

    def submit(self, tmp_path: Path, name: str, **hyperparameters: float) -> dict[str, Any]:
        """The example's manifest, run from this checkout; returns the stored Experiment."""
        doc = copy.deepcopy(MANIFEST)
        doc["metadata"]["name"] = name
        doc["metadata"]["annotations"] = {"sim.kexp.io/run-for": "10s"}
        doc["spec"]["trainer"]["command"] = ["python", str(EXAMPLE / "train.py")]
        doc["spec"]["hyperparameters"].update(hyperparameters)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        result = self.kexp("submit", str(path), "--no-source")
        assert result.exit_code == 0, result.output
        return self.get(name)

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "kexp.io", "v1alpha1", self.ns, "experiments", name
        )
        return obj

    def run_trainer(self, name: str) -> Result:
        return self.kexp(
            "dev", "run-trainer", "--state-dir", str(self.stack.state_dir), "-n", self.ns, name
        )

    def status_when(self, name: str, key: str, value: Any = None) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def ready() -> dict[str, Any] | None:
            status: dict[str, Any] = self.get(name).get("status") or {}
            last.update(status)
            found = status.get(key)
            return status if (found if value is None else found == value) else None

        try:
            return wait_until(ready, timeout_s=90, what=f"{name}'s status.{key}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the status was {last}") from None


@pytest.fixture
def runner(stack: Stack, kube: Any, namespace: str, operator: OperatorProcess) -> Runner:
    return Runner(stack, kube, namespace)


def test_the_example_manifest_is_a_valid_custom_experiment() -> None:
    Experiment.model_validate(MANIFEST)
    spec = validate_spec(MANIFEST["spec"])
    assert spec["algorithm"] == "Custom"
    assert spec["trainer"]["command"] == ["python", "/app/train.py"]
    # the image copies the script to where the manifest runs it
    assert "COPY train.py /app/train.py" in (EXAMPLE / "Dockerfile").read_text()


def test_custom_trainer_output_is_read_and_harvested(
    runner: Runner, s3: Minio, tmp_path: Path
) -> None:
    exp = runner.submit(tmp_path, "linreg")
    trained = runner.run_trainer("linreg")
    assert trained.exit_code == 0, trained.output[-3000:]
    assert "trained to step 2000" in trained.output

    bucket = contract.DEFAULT_BUCKET
    prefix = contract.s3_prefix(runner.ns, "linreg", exp["metadata"]["uid"])
    # The operator's reader, without and with the CSV mapping of spec.evaluation.resultsCsv.
    report, problem = read_results(s3, bucket, prefix, None, job_succeeded=True)
    assert problem is None
    assert report is not None
    assert report.outcome == "succeeded"
    assert report.step == 2000
    assert report.scores["a"] == pytest.approx(3.0, abs=0.2)  # it learned y = 3x + 1
    assert report.scores["b"] == pytest.approx(1.0, abs=0.2)
    assert report.environment is not None
    assert report.environment.python_version
    best = report.checkpoints.best
    assert best == contract.s3_uri(bucket, prefix + "checkpoints/best.json")
    assert read_object(s3, bucket, prefix + "checkpoints/best.json") is not None
    csv_spec = MANIFEST["spec"]["evaluation"]["resultsCsv"]
    merged, problem = read_results(s3, bucket, prefix, csv_spec, job_succeeded=True)
    assert problem is None
    assert merged is not None
    assert set(merged.scores) == {"reward", "a", "b", "r2", "eval_mse"}
    rows = list(csv.DictReader(io.StringIO(read_text(s3, bucket, prefix + "eval/scenarios.csv"))))
    assert merged.scores["r2"] == pytest.approx(sum(float(r["r2"]) for r in rows) / len(rows))
    assert merged.scores["r2"] > 0.95
    progress = read_progress(s3, bucket, prefix)
    assert progress is not None
    assert (progress.step, progress.total_steps) == (2000, 2000)
    latest = read_text(s3, bucket, prefix + contract.LATEST_POINTER)
    assert latest == prefix + "checkpoints/step-2000.json"

    # ... and the real operator harvests it when the Job ends: scores, objective, checkpoints.
    status = runner.status_when("linreg", "results")
    assert status["phase"] == "Succeeded", status
    assert status["results"]["r2"] == pytest.approx(merged.scores["r2"])
    assert status["results"]["eval_mse"] == pytest.approx(merged.scores["eval_mse"])
    assert status["score"] == pytest.approx(merged.scores["r2"])  # spec.objective.metric
    assert status["checkpoints"]["best"] == best
    # kexp's own tools read its metrics.csv
    report_md = runner.kexp("report", "linreg")
    assert report_md.exit_code == 0, report_md.output
    assert "| step | episode_reward |" in report_md.output


def test_a_config_the_trainer_refuses_fails_the_run_naming_the_field(
    runner: Runner, s3: Minio, tmp_path: Path
) -> None:
    exp = runner.submit(tmp_path, "linreg-bad-lr", learningRate=5.0)
    trained = runner.run_trainer("linreg-bad-lr")
    assert trained.exit_code == 2, trained.output[-3000:]
    assert "learningRate 5.0 is outside (0, 1]" in trained.output
    prefix = contract.s3_prefix(runner.ns, "linreg-bad-lr", exp["metadata"]["uid"])
    report, problem = read_results(s3, contract.DEFAULT_BUCKET, prefix, None, job_succeeded=True)
    assert problem is None
    assert report is not None
    assert report.outcome == "failed"
    assert report.error_field == "spec.hyperparameters.learningRate"
    # With the example's resultsCsv mapping, as the operator reads it: a run that failed before
    # its evaluation wrote no CSV, and its own verdict in results.json must still count.
    csv_spec = MANIFEST["spec"]["evaluation"]["resultsCsv"]
    mapped, problem = read_results(
        s3, contract.DEFAULT_BUCKET, prefix, csv_spec, job_succeeded=True
    )
    assert problem is None, problem
    assert mapped is not None
    assert mapped.outcome == "failed"
    status = runner.status_when("linreg-bad-lr", "phase", "Failed")
    assert status["reason"] == "TrainerFailed"
    assert "spec.hyperparameters.learningRate" in status["message"]
