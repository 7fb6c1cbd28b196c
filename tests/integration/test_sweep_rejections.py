"""Bad sweeps refused by the real API server (``kubectl apply``), naming the field; and the
one rule the schema cannot state (tpe with a grid) refused by the operator instead.

The generic sweep bounds (empty spaces, reversed ranges, two kinds in one space, ...) are in
test_api_rejections.py; these are the rules between the sweep's fields and the spec's.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import OperatorProcess
from tests.integration.test_api_rejections import (
    Api,
    Bad,
    api,  # noqa: F401 - the fixture
    assert_cause,
    edited,
    manifest,
    refused,
    sweep,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.stack

BAD = [
    Bad(
        "grid-search-with-a-range",
        {
            "sweep": {
                **sweep(learningRate={"logUniform": [1.0e-5, 1.0e-3]}),
                "searchAlgorithm": "grid",
            }
        },
        "spec.sweep.parameters",
        "the grid search tries every combination, so every parameter must be grid or choice",
    ),
    Bad(
        "reduction-factor-without-asha",
        {"sweep": {**sweep(batchSize={"choice": [32, 64]}), "scheduler": {"reductionFactor": 3}}},
        "spec.sweep.scheduler.reductionFactor",
        "reductionFactor applies only to the asha scheduler",
    ),
    Bad(
        "sweep-of-a-custom-trainer",
        {
            "algorithm": "Custom",
            "trainer": {"image": "lab/x:1"},
            "sweep": sweep(batchSize={"choice": [32, 64]}),
        },
        "spec.sweep",
        "a sweep runs kexp's built-in algorithms",
    ),
    Bad(
        "sweep-over-several-nodes",
        {"resources": {"nodes": 2}, "sweep": sweep(batchSize={"choice": [32, 64]})},
        "spec.sweep",
        "each trial runs on one node",
    ),
    Bad(
        "ray-cluster-without-workers",
        {"sweep": {**sweep(batchSize={"choice": [32, 64]}), "rayCluster": {"workers": 0}}},
        "spec.sweep.rayCluster.workers",
        "should be greater than or equal to 1",
    ),
    Bad(
        "ray-worker-cpu-not-a-quantity",
        {
            "sweep": {
                **sweep(batchSize={"choice": [32, 64]}),
                "rayCluster": {"cpuPerWorker": "lots"},
            }
        },
        "spec.sweep.rayCluster.cpuPerWorker",
        "should match",
    ),
    Bad(
        "num-samples-zero",
        {"sweep": {**sweep(batchSize={"choice": [32, 64]}), "numSamples": 0}},
        "spec.sweep.numSamples",
        "should be greater than or equal to 1",
    ),
    Bad(
        "unknown-scheduler",
        {"sweep": {**sweep(batchSize={"choice": [32, 64]}), "scheduler": {"type": "pbt"}}},
        "spec.sweep.scheduler.type",
        '"pbt"',
        "FieldValueNotSupported",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_a_bad_sweep_is_refused_naming_the_field(api: Api, case: Bad) -> None:  # noqa: F811
    code, status, text = refused(lambda: api.create(manifest("bad", edited(case.edits))))
    assert code == 422, text
    assert_cause(status, text, case.field, case.says, case.reason)


def test_a_good_sweep_is_accepted_as_sent(api: Api) -> None:  # noqa: F811
    spec = edited(
        {
            "sweep": {
                "numSamples": 8,
                "maxConcurrentTrials": 2,
                "searchAlgorithm": "grid",
                "scheduler": {"type": "median", "gracePeriod": 2},
                "parameters": {"batchSize": {"choice": [32, 64]}, "hidden": {"grid": [32, 64]}},
                "rayCluster": {
                    "workers": 2,
                    "gpusPerWorker": 1,
                    "cpuPerWorker": 8,
                    "memoryPerWorker": "32Gi",
                    "image": "lab/ray:2",
                },
            }
        }
    )
    assert api.create(manifest("good", spec))["spec"] == spec


def test_tpe_over_a_grid_is_refused_by_the_operator_naming_the_field(
    api: Api,  # noqa: F811
    operator: OperatorProcess,
) -> None:
    # The schema cannot see into grid (its values are untyped), so the server accepts it and
    # the operator marks it invalid, with the same words pydantic uses.
    spec = edited({"sweep": {**sweep(policy={"grid": ["mlp", "cnn"]}), "searchAlgorithm": "tpe"}})
    api.create(manifest("tpe-grid", spec))

    def invalid() -> dict[str, Any] | None:
        status = api.get("tpe-grid").get("status") or {}
        return status if status.get("reason") == "InvalidSpec" else None

    status = wait_until(invalid, what="Validated=False")
    assert (
        "spec.sweep.parameters.policy.grid: the tpe search cannot sample a grid"
        in (status["message"])
    )
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    assert validated["status"] == "False"
