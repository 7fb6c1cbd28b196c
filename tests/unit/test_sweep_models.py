"""The sweep parts of the API models and of the operator's validation (pydantic side; the
API server's side is tests/integration/test_sweep_rejections.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kexp.api.models import Sweep
from kexp.api.validation import validate_spec

BASE: dict[str, Any] = {
    "algorithm": "PPO",
    "environment": {"id": "CartPole-v1"},
    "training": {"totalSteps": 100},
}


def sweep(**fields: Any) -> dict[str, Any]:
    return {"numSamples": 4, "parameters": {"learningRate": {"choice": [1.0e-3]}}, **fields}


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        (
            {"sweep": sweep(searchAlgorithm="grid", parameters={"lr": {"uniform": [0, 1]}})},
            "spec.sweep.parameters.lr.uniform: the grid search tries every combination",
        ),
        (
            {"sweep": sweep(searchAlgorithm="tpe", parameters={"policy": {"grid": ["a", "b"]}})},
            "spec.sweep.parameters.policy.grid: the tpe search cannot sample a grid",
        ),
        (
            {"sweep": sweep(scheduler={"type": "median", "reductionFactor": 3})},
            "spec.sweep.scheduler: reductionFactor applies only to the asha scheduler",
        ),
        (
            {"sweep": sweep(numSamples=10000, parameters={"a": {"grid": [1, 2]}})},
            "numSamples x grid combinations is 20000 trials; at most 10000",
        ),
        (
            {"sweep": sweep(), "algorithm": "Custom", "trainer": {"image": "lab/x:1"}},
            "spec.sweep: a sweep runs kexp's built-in algorithms",
        ),
        (
            {"sweep": sweep(), "resources": {"nodes": 2}},
            "spec.sweep: each trial runs on one node",
        ),
        (
            {"sweep": sweep(rayCluster={"workers": 0})},
            "spec.sweep.rayCluster.workers",
        ),
        (
            {"sweep": sweep(rayCluster={"cpuPerWorker": "lots"})},
            "spec.sweep.rayCluster.cpuPerWorker",
        ),
    ],
)
def test_a_bad_sweep_is_invalid_naming_the_field(edits: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_spec({**BASE, **edits})


def test_a_good_sweep_gets_its_defaults() -> None:
    got = validate_spec({**BASE, "sweep": sweep(rayCluster={"workers": 2, "cpuPerWorker": 8})})
    assert got["sweep"]["searchAlgorithm"] == "random"
    assert got["sweep"]["scheduler"] == {"type": "none"}
    assert got["sweep"]["rayCluster"] == {"workers": 2, "gpusPerWorker": 0, "cpuPerWorker": "8"}


def test_planned_trials() -> None:
    assert Sweep.model_validate(sweep()).planned_trials() == 4
    grid = sweep(parameters={"a": {"grid": [1, 2, 3]}, "b": {"choice": [1, 2]}})
    assert Sweep.model_validate(grid).planned_trials() == 12  # random search samples choice
    assert Sweep.model_validate({**grid, "searchAlgorithm": "grid"}).planned_trials() == 24
