"""The API models: what parses, what is refused (naming the field), merging and hashing."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from pydantic import ValidationError

from kexp.api import models
from kexp.api.models import (
    Algorithm,
    Experiment,
    ExperimentSpec,
    ExperimentStatus,
    ExperimentTemplate,
    ObjectiveMode,
    Phase,
    config_hash,
    merge_template,
    resolve_spec,
)

# The example of DESIGN.md, as `kubectl get -o json` returns it.
EXPERIMENT: dict[str, Any] = {
    "apiVersion": "kexp.io/v1alpha1",
    "kind": "Experiment",
    "metadata": {
        "name": "lr-high",
        "namespace": "research",
        "uid": "0f1e2d3c-0000-4000-8000-000000000001",
        "generation": 1,
        "creationTimestamp": "2025-01-02T03:04:05Z",
        "labels": {"kexp.io/tag.lr-ablation": "true"},
        "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"],
    },
    "spec": {
        "description": "Test higher learning rate",
        "templateRef": "ppo-highway",
        "tags": ["lr-ablation"],
        "algorithm": "PPO",
        "environment": {"id": "highway-fast-v0", "numEnvs": 8, "config": {"lanes_count": 4}},
        "hyperparameters": {"learningRate": 3.0e-4, "batchSize": 2048, "gamma": 0.99},
        "training": {
            "totalSteps": 1000000,
            "seed": 42,
            "checkpointEvery": 50000,
            "evalEvery": 50000,
        },
        "evaluation": {"episodes": 20},
        "objective": {"metric": "pdm_score", "mode": "max"},
        "initFrom": {"experiment": "cimrl-bc", "checkpoint": "best"},
        "expertData": "s3://datasets/highway/expert-v1/",
        "sweep": {
            "numSamples": 16,
            "maxConcurrentTrials": 4,
            "searchAlgorithm": "random",
            "scheduler": {"type": "asha", "gracePeriod": 2, "reductionFactor": 3},
            "parameters": {
                "learningRate": {"logUniform": [1.0e-5, 1.0e-3]},
                "batchSize": {"choice": [32, 48, 64]},
                "activation": {"grid": ["relu", "tanh"]},
                "gamma": {"uniform": [0.9, 0.999]},
                "epochs": {"randint": [1, 10]},
            },
            "rayCluster": {"workers": 2, "gpusPerWorker": 1},
        },
        "resources": {"gpus": 1, "cpu": "4", "memory": "16Gi", "nodes": 1},
        "trainer": {
            "image": "ghcr.io/lab/planner:1.2",
            "command": ["python", "-m", "planner.train"],
            "args": ["--fast"],
            "env": [{"name": "OMP_NUM_THREADS", "value": "4"}],
        },
        "source": {
            "repository": "https://github.com/lab/planner.git",
            "revision": "main",
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "dirty": False,
        },
        "storage": {"bucket": "experiments", "secretRef": "kexp-s3"},
        "retry": {"backoffLimit": 2, "activeDeadlineSeconds": 86400},
    },
    "status": {
        "phase": "Running",
        "conditions": [
            {
                "type": "Validated",
                "status": "True",
                "reason": "SpecValid",
                "message": "",
                "lastTransitionTime": "2025-01-02T03:04:06Z",
                "observedGeneration": 1,
            }
        ],
        "observedGeneration": 1,
        "provenance": {"gitCommit": "0123456789abcdef0123456789abcdef01234567", "gitDirty": False},
        "jobs": {"train": "lr-high-train"},
        "progress": {"step": 500000, "totalSteps": 1000000, "percent": 50.0},
        "checkpoints": {"latest": "s3://experiments/research/lr-high/u/checkpoints/step-500000.pt"},
        "results": {"pdm_score": 0.81, "reward": 21.5, "environment": "highway-fast-v0"},
        "score": 0.81,
        "sweep": {
            "trials": 16,
            "completed": 3,
            "bestTrial": {"name": "t-3", "hyperparameters": {"learningRate": 1e-4}, "score": 0.8},
            "leaderboard": [{"name": "t-3", "score": 0.8}],
        },
        # kopf keeps its own bookkeeping in status; readers must not trip over it.
        "kopf": {"progress": {}},
    },
}


def spec(**changes: Any) -> dict[str, Any]:
    """The example spec with top-level fields replaced (None removes one)."""
    result = copy.deepcopy(EXPERIMENT["spec"])
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def test_constants_match_the_wire() -> None:
    assert models.GROUP == "kexp.io"
    assert models.VERSION == "v1alpha1"
    assert models.API_VERSION == "kexp.io/v1alpha1"
    assert models.EXPERIMENT_PLURAL == "experiments"
    assert models.TEMPLATE_PLURAL == "experimenttemplates"
    assert Experiment.model_fields["api_version"].default == models.API_VERSION
    assert Experiment.model_fields["kind"].default == models.EXPERIMENT_KIND
    assert ExperimentTemplate.model_fields["kind"].default == models.TEMPLATE_KIND


def test_a_full_kubernetes_object_parses() -> None:
    exp = Experiment.model_validate(EXPERIMENT)
    assert exp.metadata.name == "lr-high"
    assert exp.metadata.generation == 1
    assert exp.spec.algorithm is Algorithm.PPO
    assert exp.spec.environment is not None
    assert exp.spec.environment.num_envs == 8
    assert exp.spec.environment.config == {"lanes_count": 4}
    assert exp.spec.hyperparameters["batchSize"] == 2048
    assert exp.spec.sweep is not None
    assert exp.spec.sweep.parameters["learningRate"].log_uniform == (1.0e-5, 1.0e-3)
    assert exp.spec.sweep.parameters["activation"].grid == ["relu", "tanh"]
    assert exp.spec.objective.mode is ObjectiveMode.MAX
    assert exp.status.phase is Phase.RUNNING
    assert exp.status.conditions[0].type == "Validated"
    assert exp.status.results["environment"] == "highway-fast-v0"
    assert exp.status.sweep is not None
    assert exp.status.sweep.best_trial is not None
    assert exp.status.sweep.best_trial.score == 0.8


def test_the_wire_form_round_trips_in_camel_case() -> None:
    exp = Experiment.model_validate(EXPERIMENT)
    wire = exp.spec.to_wire()
    assert wire["templateRef"] == "ppo-highway"
    assert wire["training"]["checkpointEvery"] == 50000
    assert wire["sweep"]["parameters"]["learningRate"] == {"logUniform": [1.0e-5, 1.0e-3]}
    assert ExperimentSpec.model_validate(wire) == exp.spec


def test_snake_case_names_are_accepted_too() -> None:
    parsed = ExperimentSpec.model_validate(
        {"algorithm": "SAC", "environment": {"id": "CartPole-v1", "num_envs": 2}}
    )
    assert parsed.environment is not None
    assert parsed.environment.num_envs == 2


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    parsed = ExperimentSpec.model_validate({"algorithm": "BC"})
    assert parsed.resources.gpus == 0
    assert parsed.resources.cpu == "1"
    assert parsed.resources.memory == "4Gi"
    assert parsed.resources.nodes == 1
    assert parsed.objective.metric == "pdm_score"
    assert parsed.objective.mode is ObjectiveMode.MAX
    assert parsed.evaluation.episodes == 10
    assert parsed.storage.bucket == "experiments"
    assert parsed.storage.secret_ref == "kexp-s3"
    assert parsed.retry.backoff_limit == 2
    assert parsed.retry.active_deadline_seconds is None


def test_an_integer_quantity_becomes_its_string() -> None:
    parsed = ExperimentSpec.model_validate({"algorithm": "PPO", "resources": {"cpu": 4}})
    assert parsed.resources.cpu == "4"


def test_a_spec_naming_only_a_template_is_valid() -> None:
    parsed = ExperimentSpec.model_validate({"templateRef": "ppo-highway"})
    assert parsed.algorithm is None


def test_a_template_is_a_partial_spec_without_template_ref() -> None:
    template = {
        "apiVersion": "kexp.io/v1alpha1",
        "kind": "ExperimentTemplate",
        "metadata": {"name": "ppo-highway"},
        "spec": {"hyperparameters": {"gamma": 0.99}, "resources": {"gpus": 1}},
    }
    assert ExperimentTemplate.model_validate(template).spec.resources.gpus == 1
    template["spec"]["templateRef"] = "another"
    with pytest.raises(ValidationError, match="templateRef"):
        ExperimentTemplate.model_validate(template)


def test_status_ignores_fields_it_does_not_know() -> None:
    status = ExperimentStatus.model_validate({"phase": "Failed", "kopf": {"x": 1}})
    assert status.phase is Phase.FAILED
    assert "kopf" not in status.to_wire()


def sweep_with(space: dict[str, Any]) -> dict[str, Any]:
    return {"numSamples": 4, "parameters": {"learningRate": space}}


# (spec changes, text the error must contain: the field's path, then what is wrong)
INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "negative learningRate",
        {"hyperparameters": {"learningRate": -1e-3}},
        ["spec.hyperparameters", "learningRate must be a number > 0"],
    ),
    (
        "learningRate as a string",
        {"hyperparameters": {"learningRate": "3e-4"}},
        ["learningRate must be a number > 0"],
    ),
    (
        "batchSize 0",
        {"hyperparameters": {"batchSize": 0}},
        ["spec.hyperparameters", "batchSize must be an integer > 0"],
    ),
    (
        "fractional batchSize",
        {"hyperparameters": {"batchSize": 1.5}},
        ["batchSize must be an integer > 0"],
    ),
    (
        "boolean batchSize",
        {"hyperparameters": {"batchSize": True}},
        ["batchSize must be an integer > 0"],
    ),
    (
        "nodes 0",
        {"resources": {"nodes": 0}},
        ["spec.resources.nodes", "greater than or equal to 1"],
    ),
    ("negative gpus", {"resources": {"gpus": -1}}, ["spec.resources.gpus"]),
    ("cpu not a quantity", {"resources": {"cpu": "4 cores"}}, ["spec.resources.cpu"]),
    (
        "logUniform high below low",
        {"sweep": sweep_with({"logUniform": [1e-3, 1e-5]})},
        ["spec.sweep.parameters.learningRate", "logUniform: low (0.001) must be less than high"],
    ),
    (
        "logUniform from 0",
        {"sweep": sweep_with({"logUniform": [0, 1e-3]})},
        ["logUniform: low (0.0) must be greater than 0"],
    ),
    (
        "uniform empty range",
        {"sweep": sweep_with({"uniform": [1, 1]})},
        ["uniform: low (1.0) must be less than high"],
    ),
    (
        "randint reversed",
        {"sweep": sweep_with({"randint": [5, 2]})},
        ["randint: low (5) must be less than high"],
    ),
    (
        "uniform with three bounds",
        {"sweep": sweep_with({"uniform": [0, 1, 2]})},
        ["spec.sweep.parameters.learningRate.uniform"],
    ),
    (
        "empty choice list",
        {"sweep": sweep_with({"choice": []})},
        ["spec.sweep.parameters.learningRate.choice", "at least 1 item"],
    ),
    (
        "two kinds in one space",
        {"sweep": sweep_with({"choice": [1], "uniform": [0, 1]})},
        ["exactly one of choice, grid, uniform, logUniform or randint", "got choice, uniform"],
    ),
    ("no kind", {"sweep": sweep_with({})}, ["exactly one of", "got none"]),
    ("unknown space kind", {"sweep": sweep_with({"normal": [0, 1]})}, ["normal"]),
    ("sweep without parameters", {"sweep": {"numSamples": 4}}, ["spec.sweep.parameters"]),
    (
        "sweep with empty parameters",
        {"sweep": {"parameters": {}}},
        ["spec.sweep.parameters", "at least 1 item"],
    ),
    ("unknown algorithm", {"algorithm": "DQN"}, ["spec.algorithm", "'PPO'"]),
    (
        "no algorithm and no template",
        {"algorithm": None, "templateRef": None},
        ["spec.algorithm is required unless spec.templateRef names a template"],
    ),
    ("objective mode best", {"objective": {"mode": "best"}}, ["spec.objective.mode", "'max'"]),
    (
        "misspelt field at the top of the spec",
        {"learningrate": 0.1},
        ["spec.learningrate", "Extra inputs are not permitted"],
    ),
    (
        "misspelt nested field",
        {"training": {"totalSteps": 10, "totalstep": 5}},
        ["spec.training.totalstep"],
    ),
    ("numEnvs 0", {"environment": {"id": "x", "numEnvs": 0}}, ["spec.environment.numEnvs"]),
    ("totalSteps 0", {"training": {"totalSteps": 0}}, ["spec.training.totalSteps"]),
    ("negative seed", {"training": {"totalSteps": 1, "seed": -1}}, ["spec.training.seed"]),
    ("episodes 0", {"evaluation": {"episodes": 0}}, ["spec.evaluation.episodes"]),
    ("expertData not on S3", {"expertData": "/data/expert"}, ["spec.expertData"]),
    ("short commit", {"source": {"commit": "abc123"}}, ["spec.source.commit"]),
    ("tag with a space", {"tags": ["Bad Tag"]}, ["spec.tags.0"]),
    ("tag too long for a label key", {"tags": ["a" * 60]}, ["spec.tags.0", "59"]),
    ("duplicate tags", {"tags": ["a", "a"]}, ["spec.tags", "duplicate tags: a"]),
    ("templateRef not a name", {"templateRef": "Bad_Name"}, ["spec.templateRef"]),
    (
        "initFrom checkpoint worst",
        {"initFrom": {"experiment": "a", "checkpoint": "worst"}},
        ["spec.initFrom.checkpoint"],
    ),
    (
        "reductionFactor 1",
        {"sweep": {"parameters": {"a": {"choice": [1]}}, "scheduler": {"reductionFactor": 1}}},
        ["spec.sweep.scheduler.reductionFactor"],
    ),
    (
        "duplicate env names",
        {"trainer": {"env": [{"name": "A"}, {"name": "A", "value": "2"}]}},
        ["spec.trainer", "duplicate variable names A"],
    ),
    ("negative backoffLimit", {"retry": {"backoffLimit": -1}}, ["spec.retry.backoffLimit"]),
]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [pytest.param(changes, expected, id=name) for name, changes, expected in INVALID],
)
def test_invalid_specs_are_refused_naming_the_field(
    changes: dict[str, Any], expected: list[str]
) -> None:
    obj = copy.deepcopy(EXPERIMENT)
    obj["spec"] = spec(**changes)
    with pytest.raises(ValidationError) as excinfo:
        Experiment.model_validate(obj)
    message = str(excinfo.value)
    for text in expected:
        assert text in message


def test_the_example_spec_itself_is_valid() -> None:
    # The table above is only meaningful if the unchanged example passes.
    ExperimentSpec.model_validate(spec())


# ---- merge_template --------------------------------------------------------------------------

TEMPLATE_SPEC: dict[str, Any] = {
    "algorithm": "PPO",
    "tags": ["highway"],
    "environment": {"id": "highway-fast-v0", "numEnvs": 8, "config": {"lanes": 4, "vehicles": 50}},
    "hyperparameters": {"learningRate": 3e-4, "gamma": 0.99},
    "training": {"totalSteps": 1000000, "checkpointEvery": 50000},
    "trainer": {"args": ["--a", "--b"]},
    "sweep": {
        "numSamples": 8,
        "parameters": {"learningRate": {"logUniform": [1e-5, 1e-3]}, "gamma": {"choice": [0.9]}},
    },
}


def test_merge_lets_the_experiment_win_and_merges_maps_recursively() -> None:
    mine = {
        "templateRef": "ppo-highway",
        "hyperparameters": {"learningRate": 1e-3},
        "environment": {"config": {"lanes": 3}},
        "training": {"seed": 7},
    }
    merged = merge_template(TEMPLATE_SPEC, mine)
    assert merged["algorithm"] == "PPO"
    assert merged["templateRef"] == "ppo-highway"
    assert merged["hyperparameters"] == {"learningRate": 1e-3, "gamma": 0.99}
    assert merged["environment"] == {
        "id": "highway-fast-v0",
        "numEnvs": 8,
        "config": {"lanes": 3, "vehicles": 50},
    }
    assert merged["training"] == {"totalSteps": 1000000, "checkpointEvery": 50000, "seed": 7}


def test_merge_replaces_lists_instead_of_concatenating() -> None:
    merged = merge_template(TEMPLATE_SPEC, {"tags": ["mine"], "trainer": {"args": ["--c"]}})
    assert merged["tags"] == ["mine"]
    assert merged["trainer"] == {"args": ["--c"]}


def test_merge_replaces_a_sweep_parameter_space_whole() -> None:
    mine = {"sweep": {"parameters": {"learningRate": {"choice": [1e-4, 1e-3]}}}}
    merged = merge_template(TEMPLATE_SPEC, mine)
    assert merged["sweep"]["numSamples"] == 8
    assert merged["sweep"]["parameters"] == {
        "learningRate": {"choice": [1e-4, 1e-3]},
        "gamma": {"choice": [0.9]},
    }


def test_merge_is_pure() -> None:
    template = copy.deepcopy(TEMPLATE_SPEC)
    mine = {"environment": {"config": {"lanes": 3}}}
    merged = merge_template(template, mine)
    merged["environment"]["config"]["lanes"] = 99
    merged["tags"].append("x")
    assert template == TEMPLATE_SPEC
    assert mine == {"environment": {"config": {"lanes": 3}}}


def test_merge_ignores_nulls_and_keeps_the_template_value() -> None:
    assert merge_template({"algorithm": "SAC"}, {"algorithm": None})["algorithm"] == "SAC"


def test_resolve_spec_merges_validates_and_fills_defaults() -> None:
    resolved = resolve_spec(
        {"templateRef": "ppo-highway", "training": {"totalSteps": 10}},
        {
            "algorithm": "SAC",
            "environment": {"id": "Pendulum-v1"},
        },
    )
    assert resolved["algorithm"] == "SAC"
    assert resolved["training"] == {"totalSteps": 10, "seed": 0}
    assert resolved["environment"]["numEnvs"] == 1
    assert resolved["resources"] == {"gpus": 0, "cpu": "1", "memory": "4Gi", "nodes": 1}
    with pytest.raises(ValidationError, match=r"spec|hyperparameters"):
        resolve_spec({"templateRef": "t", "hyperparameters": {"batchSize": 0}})


# ---- config_hash -----------------------------------------------------------------------------


def test_config_hash_is_16_hex_digits_and_stable_under_key_order() -> None:
    a = {"algorithm": "PPO", "training": {"totalSteps": 10, "seed": 1}, "hyperparameters": {}}
    b = {"hyperparameters": {}, "training": {"seed": 1, "totalSteps": 10}, "algorithm": "PPO"}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16
    int(config_hash(a), 16)


def test_config_hash_changes_with_what_runs_but_not_with_labels() -> None:
    base = {"algorithm": "PPO", "training": {"totalSteps": 10, "seed": 1}}
    assert config_hash(base) != config_hash({**base, "training": {"totalSteps": 10, "seed": 2}})
    relabelled = {**base, "description": "other words", "tags": ["x"], "templateRef": "t"}
    assert config_hash(base) == config_hash(relabelled)


def test_config_hash_is_pinned() -> None:
    # A changed canonical form would silently split every existing run from its re-runs.
    assert config_hash({"algorithm": "PPO"}) == "c08d15480f1599ca"  # sha256(b'{"algorithm":"PPO"}')


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"algorithm": "PPO", "environment": {"id": "CartPole-v1"}, "training": {"seed": 1}},
            "spec.training.totalSteps: required, and neither the Experiment nor its template",
        ),
        (
            {"algorithm": "PPO", "environment": {"numEnvs": 2}, "training": {"totalSteps": 5}},
            "spec.environment.id: required",
        ),
        (
            {"templateRef": "t", "environment": {"id": "x"}, "training": {"totalSteps": 5}},
            "spec.algorithm: required",
        ),
    ],
)
def test_a_resolved_spec_must_name_what_a_template_may_leave_out(
    spec: dict[str, Any], message: str
) -> None:
    from kexp.api.validation import validate_spec

    with pytest.raises(ValueError, match=re.escape(message)):
        validate_spec(spec)


def test_a_custom_trainer_needs_no_environment() -> None:
    from kexp.api.validation import validate_spec

    spec = {"algorithm": "Custom", "training": {"totalSteps": 5}, "trainer": {"image": "x:1"}}
    assert validate_spec(spec)["algorithm"] == "Custom"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"algorithm": "Custom", "training": {"totalSteps": 5}},
            "spec.trainer.image: required when spec.algorithm is Custom",
        ),
        (
            {"algorithm": "GAIL", "environment": {"id": "x"}, "training": {"totalSteps": 5}},
            "spec.expertData: required for GAIL",
        ),
        (
            {
                "algorithm": "PPO",
                "environment": {"id": "x"},
                "training": {"totalSteps": 5},
                "sweep": {
                    "numSamples": 4,
                    "searchAlgorithm": "tpe",
                    "parameters": {"batchSize": {"grid": [32, 64]}},
                },
            },
            "spec.sweep.parameters.batchSize.grid: the tpe search cannot sample a grid",
        ),
    ],
)
def test_cross_field_rules_that_need_the_merged_spec(spec: dict[str, Any], message: str) -> None:
    from kexp.api.validation import validate_spec

    with pytest.raises(ValueError, match=re.escape(message)):
        validate_spec(spec)
