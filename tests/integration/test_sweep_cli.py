"""``kexp show``, ``compare`` and ``export`` of sweeps, on the real stack and operator.

The sweeps are simulated: kwok runs the sweep Job's pod for a few seconds, and what the tune
entry point would have written (sweep.json, results.json) is put into MinIO under the run's
prefix before it ends, so the operator harvests it for real.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest

from kexp.api import contract
from kexp.api.reports import ResultsReport, SweepReport, TrialReport
from tests.integration.test_cli import Kexp, kexp  # noqa: F401 - the fixture
from tests.integration.test_sweep import sweep_experiment

pytestmark = pytest.mark.stack

TRIALS = [
    TrialReport(
        name="abc12_00000",
        state="completed",
        hyperparameters={"learningRate": 1.0e-3, "hidden": 32},
        score=190.0,
        scores={"reward": 190.0, "reward_std": 3.0},
        step=2048,
        iterations=8,
        checkpoint="s3://experiments/x/trials/abc12_00000/checkpoints/best.pt",
    ),
    TrialReport(
        name="abc12_00001",
        state="stoppedEarly",
        hyperparameters={"learningRate": 1.0e-5, "hidden": 16},
        score=20.0,
        step=256,
        iterations=1,
    ),
    TrialReport(
        name="abc12_00002",
        state="failed",
        hyperparameters={"learningRate": 1.0e-2, "hidden": 16},
        error="ZeroDivisionError: integer division or modulo by zero",
    ),
]


def put(k: Kexp, key: str, text: str) -> None:
    data = text.encode()
    k.s3.put_object(contract.DEFAULT_BUCKET, key, io.BytesIO(data), len(data))


def simulated_sweep(k: Kexp, name: str, learning_rates: list[float]) -> None:
    body = sweep_experiment(
        name,
        {
            "numSamples": 3,
            "scheduler": {"type": "asha"},
            "parameters": {
                "learningRate": {"choice": learning_rates},
                "hidden": {"choice": [16, 32]},
            },
        },
        annotations={"sim.kexp.io/run-for": "5s"},
    )
    k.custom.create_namespaced_custom_object("kexp.io", "v1alpha1", k.ns, "experiments", body)
    prefix = k.prefix(name)
    report = SweepReport(
        outcome="succeeded",
        metric="reward",
        planned=3,
        trials=TRIALS,
        updated_at="2026-11-23T12:00:00Z",
    )
    put(k, prefix + contract.SWEEP_FILE, report.to_json())
    results = ResultsReport(outcome="succeeded", scores={"reward": 190.0}, step=2048)
    put(k, prefix + contract.RESULTS_FILE, results.to_json())


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def sweeps(kexp: Kexp) -> Kexp:  # noqa: F811
    simulated_sweep(kexp, "sw-a", [1.0e-3, 1.0e-5, 1.0e-2])
    simulated_sweep(kexp, "sw-b", [1.0e-3, 1.0e-4])
    for name in ("sw-a", "sw-b"):
        kexp.wait_phase(name, "Succeeded")
    return kexp


def test_show_has_the_sweeps_counts_best_trial_and_leaderboard(sweeps: Kexp) -> None:
    out = sweeps.ok("show", "sw-a").output
    assert "Sweep" in out
    assert "random, scheduler asha" in out
    assert "3 of 3: 0 running, 1 completed, 1 stopped early, 1 failed" in out
    assert "abc12_00000" in out
    lines = [line.split() for line in out.splitlines()]
    header = next(line for line in lines if line[:3] == ["#", "TRIAL", "STATE"])
    assert header[-2:] == ["hidden", "learningRate"]
    ranked = [line[1] for line in lines if line and line[0] in ("1", "2")]
    assert ranked == ["abc12_00000", "abc12_00001"]  # the failed trial has no score


def test_export_trials_has_one_row_per_trial_with_its_hyperparameters(sweeps: Kexp) -> None:
    out = sweeps.ok("export", "-", "--trials").output
    got = rows(out)
    assert len(got) == 6
    first = next(r for r in got if r["name"] == "sw-a" and r["trial"] == "abc12_00000")
    assert first["state"] == "completed"
    assert float(first["score"]) == 190.0
    assert float(first["hp.learningRate"]) == 1.0e-3
    assert first["hp.batchSize"] == "64"  # the spec's own, not swept
    assert float(first["result.reward_std"]) == 3.0
    failed = next(r for r in got if r["trial"] == "abc12_00002")
    assert failed["error"].startswith("ZeroDivisionError")
    assert list(got[0])[:4] == ["namespace", "name", "trial", "state"]


def test_the_master_csv_and_compare_know_sweeps(sweeps: Kexp) -> None:
    got = {r["name"]: r for r in rows(sweeps.ok("export", "-").output)}
    assert got["sw-a"]["sweep.scheduler"] == "asha"
    assert got["sw-a"]["trials.stopped_early"] == "1"
    assert got["sw-a"]["trials.best"] == "abc12_00000"
    assert got["sw-a"]["sweep.param.learningRate"] == '{"choice":[0.001,1e-05,0.01]}'
    out = sweeps.ok("compare", "sw-a", "sw-b").output
    assert "sweep.param.learningRate" in out  # a setting that differs
    assert "trials.completed" in out  # an outcome


def test_export_trials_without_a_sweep_says_so(kexp: Kexp) -> None:  # noqa: F811
    body: dict[str, Any] = sweep_experiment("plain", {"parameters": {"hidden": {"choice": [1]}}})
    del body["spec"]["sweep"]
    body["metadata"]["annotations"] = {"sim.kexp.io/run-for": "1s"}
    kexp.custom.create_namespaced_custom_object("kexp.io", "v1alpha1", kexp.ns, "experiments", body)
    result = kexp("export", "-", "--trials")
    assert result.exit_code == 4, result.output
    assert "--trials: none of the selected experiments is a sweep" in result.output
