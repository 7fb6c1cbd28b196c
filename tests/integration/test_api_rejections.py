"""The real API server refuses bad Experiments, naming the field, and keeps the spec immutable.

Every case goes through kube-apiserver with the generated CRDs installed, so it shows what
``kubectl apply`` does, not what the pydantic models would do: a bound that the CRD fails to
carry shows up here as an accepted object and a failing test.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kexp.api import models
from kexp.dev.stack import Stack

pytestmark = pytest.mark.stack

GROUP: Final = "kexp.io"
VERSION: Final = "v1alpha1"
PLURAL: Final = "experiments"
TEMPLATE: Final = "ExperimentTemplate"
TEMPLATES: Final = "experimenttemplates"
# Explicit although it is the client's default for a dict body: a JSON patch or an
# apply patch would mean something else, and the immutability tests depend on the merge.
MERGE_PATCH: Final = "application/merge-patch+json"


def valid_spec() -> dict[str, Any]:
    """A spec the server accepts; each bad case changes one thing in it."""
    return {
        "description": "baseline",
        "tags": ["lr-ablation"],
        "algorithm": "PPO",
        "environment": {"id": "highway-fast-v0", "numEnvs": 2},
        "hyperparameters": {"learningRate": 3.0e-4, "batchSize": 64, "gamma": 0.99},
        "training": {"totalSteps": 1000, "seed": 1},
        "source": {"repository": "https://example.org/lab.git", "commit": "c" * 40},
    }


def manifest(name: str, spec: dict[str, Any], kind: str = "Experiment") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


#: As an edit's value: delete the field instead of setting it.
DROP: Final = _Drop()


def edited(edits: dict[str, Any]) -> dict[str, Any]:
    """valid_spec() with dotted paths set or dropped (no map key in these cases has a dot)."""
    spec = valid_spec()
    for path, value in edits.items():
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is DROP:
            del node[leaf]
        else:
            node[leaf] = copy.deepcopy(value)
    return spec


@dataclass(frozen=True)
class Bad:
    """A one-change bad spec and what the server must say about it."""

    id: str
    edits: dict[str, Any]
    field: str  # the cause's field path, as the server reports it
    says: str  # a fragment of the cause's message: why it was refused
    reason: str = "FieldValueInvalid"  # the cause's machine-readable reason


def sweep(**parameters: Any) -> dict[str, Any]:
    return {"numSamples": 4, "parameters": parameters}


LOG_UNIFORM_BOUNDS = "logUniform: low must be greater than 0 and less than high"
TYPE = "FieldValueTypeInvalid"
UNSUPPORTED = "FieldValueNotSupported"
REQUIRED = "FieldValueRequired"

BAD: Final = [
    # ---- enums ----
    Bad("unknown-algorithm", {"algorithm": "DQN"}, "spec.algorithm", '"DQN"', UNSUPPORTED),
    Bad(
        "objective-mode-best",
        {"objective": {"metric": "pdm_score", "mode": "best"}},
        "spec.objective.mode",
        '"best"',
        UNSUPPORTED,
    ),
    Bad(
        "initfrom-bad-checkpoint",
        {"initFrom": {"experiment": "bc-warmup", "checkpoint": "final"}},
        "spec.initFrom.checkpoint",
        '"final"',
        UNSUPPORTED,
    ),
    Bad(
        "search-algorithm-bayes",
        {"sweep": {**sweep(batchSize={"choice": [32, 64]}), "searchAlgorithm": "bayes"}},
        "spec.sweep.searchAlgorithm",
        '"bayes"',
        UNSUPPORTED,
    ),
    # ---- hyperparameters ----
    Bad(
        "learning-rate-zero",
        {"hyperparameters.learningRate": 0},
        "spec.hyperparameters.learningRate",
        "should be greater than 0",
    ),
    Bad(
        "learning-rate-negative",
        {"hyperparameters.learningRate": -1.0e-4},
        "spec.hyperparameters.learningRate",
        "should be greater than 0",
    ),
    Bad(
        "learning-rate-string",
        {"hyperparameters.learningRate": "3e-4"},
        "spec.hyperparameters.learningRate",
        "must be of type number",
        TYPE,
    ),
    Bad(
        "batch-size-zero",
        {"hyperparameters.batchSize": 0},
        "spec.hyperparameters.batchSize",
        "should be greater than or equal to 1",
    ),
    Bad(
        "batch-size-fraction",
        {"hyperparameters.batchSize": 64.5},
        "spec.hyperparameters.batchSize",
        "must be of type integer",
        TYPE,
    ),
    # ---- resources ----
    Bad(
        "nodes-zero",
        {"resources": {"nodes": 0}},
        "spec.resources.nodes",
        "should be greater than or equal to 1",
    ),
    Bad(
        "gpus-negative",
        {"resources": {"gpus": -1}},
        "spec.resources.gpus",
        "should be greater than or equal to 0",
    ),
    Bad(
        "cpu-not-a-quantity",
        {"resources": {"cpu": "four"}},
        "spec.resources.cpu",
        "should match",
    ),
    # ---- environment, training, evaluation, retry ----
    Bad(
        "num-envs-zero",
        {"environment.numEnvs": 0},
        "spec.environment.numEnvs",
        "should be greater than or equal to 1",
    ),
    Bad(
        "total-steps-zero",
        {"training.totalSteps": 0},
        "spec.training.totalSteps",
        "should be greater than or equal to 1",
    ),
    Bad(
        "total-steps-not-a-number",
        {"training.totalSteps": "many"},
        "spec.training.totalSteps",
        "must be of type integer",
        TYPE,
    ),
    Bad(
        "seed-negative",
        {"training.seed": -1},
        "spec.training.seed",
        "should be greater than or equal to 0",
    ),
    Bad(
        "episodes-zero",
        {"evaluation": {"episodes": 0}},
        "spec.evaluation.episodes",
        "should be greater than or equal to 1",
    ),
    Bad(
        "backoff-limit-negative",
        {"retry": {"backoffLimit": -1}},
        "spec.retry.backoffLimit",
        "should be greater than or equal to 0",
    ),
    # ---- references and strings ----
    Bad(
        "expert-data-not-s3",
        {"algorithm": "BC", "expertData": "https://datasets.example.org/expert-v1/"},
        "spec.expertData",
        "should match '^s3://",
    ),
    Bad(
        "short-git-commit",
        {"source.commit": "c0ffee1"},
        "spec.source.commit",
        "should match '^[0-9a-f]{40}$'",
    ),
    Bad(
        "initfrom-not-a-dns-name",
        {"initFrom": {"experiment": "BC_Warmup"}},
        "spec.initFrom.experiment",
        "should match",
    ),
    Bad(
        "template-ref-not-a-dns-name",
        {"templateRef": "PPO Highway"},
        "spec.templateRef",
        "should match",
    ),
    Bad(
        "storage-bucket-uppercase",
        {"storage": {"bucket": "Experiments"}},
        "spec.storage.bucket",
        "should match",
    ),
    # ---- tags ----
    Bad("tag-uppercase", {"tags": ["Smoke"]}, "spec.tags[0]", "should match"),
    Bad(
        "tag-too-long",
        {"tags": ["t" * 60]},
        "spec.tags[0]",
        "may not be more than 59",
        "FieldValueTooLong",
    ),
    Bad(
        "tags-duplicate",
        {"tags": ["smoke", "smoke"]},
        "spec.tags[1]",
        '"smoke"',
        "FieldValueDuplicate",
    ),
    # ---- required unless a template provides it ----
    Bad(
        "missing-algorithm",
        {"algorithm": DROP},
        "spec.algorithm",
        "spec.algorithm is required unless spec.templateRef names a template",
        REQUIRED,
    ),
    Bad(
        "missing-training",
        {"training": DROP},
        "spec.training",
        "spec.training.totalSteps is required unless spec.templateRef names a template",
        REQUIRED,
    ),
    Bad(
        "missing-total-steps",
        {"training.totalSteps": DROP},
        "spec.training",
        "spec.training.totalSteps is required",
        REQUIRED,
    ),
    Bad(
        "missing-environment-id",
        {"environment.id": DROP},
        "spec.environment",
        "spec.environment.id is required unless spec.templateRef names a template",
        REQUIRED,
    ),
    # ---- sweeps ----
    Bad(
        "sweep-without-parameters",
        {"sweep": {"numSamples": 4}},
        "spec.sweep.parameters",
        "Required value",
        REQUIRED,
    ),
    Bad(
        "sweep-empty-parameters",
        {"sweep": sweep()},
        "spec.sweep.parameters",
        "should have at least 1 properties",
    ),
    Bad(
        "sweep-empty-choice",
        {"sweep": sweep(batchSize={"choice": []})},
        "spec.sweep.parameters.batchSize.choice",
        "should have at least 1 items",
    ),
    Bad(
        "sweep-empty-space",
        {"sweep": sweep(batchSize={})},
        "spec.sweep.parameters.batchSize",
        "should have at least 1 properties",
    ),
    Bad(
        "sweep-two-kinds",
        {"sweep": sweep(learningRate={"choice": [1.0e-4], "logUniform": [1.0e-5, 1.0e-3]})},
        "spec.sweep.parameters.learningRate",
        "must have at most 1 item",
        "FieldValueTooMany",
    ),
    # The CEL rules report a map key in brackets (parameters[learningRate]) where the schema
    # checks above write parameters.learningRate: both are what the server sends.
    Bad(
        "log-uniform-low-above-high",
        {"sweep": sweep(learningRate={"logUniform": [1.0e-3, 1.0e-5]})},
        "spec.sweep.parameters[learningRate].logUniform",
        LOG_UNIFORM_BOUNDS,
    ),
    Bad(
        "log-uniform-low-equals-high",
        {"sweep": sweep(learningRate={"logUniform": [1.0e-3, 1.0e-3]})},
        "spec.sweep.parameters[learningRate].logUniform",
        LOG_UNIFORM_BOUNDS,
    ),
    Bad(
        "log-uniform-low-zero",
        {"sweep": sweep(learningRate={"logUniform": [0, 1.0e-3]})},
        "spec.sweep.parameters[learningRate].logUniform",
        LOG_UNIFORM_BOUNDS,
    ),
    Bad(
        "log-uniform-low-negative",
        {"sweep": sweep(learningRate={"logUniform": [-1.0e-3, 1.0e-3]})},
        "spec.sweep.parameters[learningRate].logUniform",
        LOG_UNIFORM_BOUNDS,
    ),
    # The server also runs the bounds rule here and adds "index out of bounds: 1 evaluating
    # rule"; the minItems cause is the one that tells the user what to fix.
    Bad(
        "log-uniform-one-bound",
        {"sweep": sweep(learningRate={"logUniform": [1.0e-3]})},
        "spec.sweep.parameters.learningRate.logUniform",
        "should have at least 2 items",
    ),
    Bad(
        "uniform-low-above-high",
        {"sweep": sweep(gamma={"uniform": [0.999, 0.9]})},
        "spec.sweep.parameters[gamma].uniform",
        "uniform: low must be less than high",
    ),
    Bad(
        "randint-low-equals-high",
        {"sweep": sweep(nSteps={"randint": [8, 8]})},
        "spec.sweep.parameters[nSteps].randint",
        "randint: low must be less than high",
    ),
    Bad(
        "max-concurrent-trials-zero",
        {"sweep": {**sweep(batchSize={"choice": [32, 64]}), "maxConcurrentTrials": 0}},
        "spec.sweep.maxConcurrentTrials",
        "should be greater than or equal to 1",
    ),
    Bad(
        "reduction-factor-one",
        {
            "sweep": {
                **sweep(batchSize={"choice": [32, 64]}),
                "scheduler": {"type": "asha", "reductionFactor": 1},
            }
        },
        "spec.sweep.scheduler.reductionFactor",
        "should be greater than or equal to 2",
    ),
    # ---- trainer ----
    Bad(
        "trainer-env-duplicate-name",
        {"trainer": {"env": [{"name": "SEED", "value": "1"}, {"name": "SEED", "value": "2"}]}},
        "spec.trainer.env[1]",
        '{"name":"SEED"}',
        "FieldValueDuplicate",
    ),
]

#: Unknown fields: refused only because the request asks for strict field validation (as
#: ``kubectl apply`` does by default); without it the server would prune them silently.
UNKNOWN: Final = [
    Bad("unknown-spec-field", {"learningrate": 3.0e-4}, "spec.learningrate", "unknown field"),
    Bad(
        "unknown-training-field",
        {"training.totalsteps": 1000},
        "spec.training.totalsteps",
        "unknown field",
    ),
]


def body_of(exc: ApiException) -> tuple[dict[str, Any], str]:
    text = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body)
    status: dict[str, Any] = json.loads(text)
    return status, text


def refused(call: Callable[[], Any]) -> tuple[int, dict[str, Any], str]:
    """Run a request that must fail: its HTTP status, the Status object and the raw body."""
    with pytest.raises(ApiException) as info:
        call()
    status, text = body_of(info.value)
    return int(info.value.status), status, text


def assert_cause(
    status: dict[str, Any], text: str, path: str, says: str, reason: str = "FieldValueInvalid"
) -> None:
    """The Status names the field both in a structured cause and in the message kubectl prints."""
    causes = status.get("details", {}).get("causes", [])
    matching = [c for c in causes if c.get("field") == path]
    assert matching, f"no cause names {path}: {text}"
    assert any(says in c.get("message", "") and c.get("reason") == reason for c in matching), text
    assert path in status["message"], text
    assert says in status["message"], text


class Api:
    """Experiments and templates in one namespace, with strict field validation."""

    def __init__(self, kube: Any, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(kube)

    def create(self, body: dict[str, Any], plural: str = PLURAL) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, plural, body, field_validation="Strict"
        )
        return obj

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            self.ns,
            PLURAL,
            name,
            body,
            field_validation="Strict",
            _content_type=MERGE_PATCH,
        )
        return obj

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, name
        )
        return obj


@pytest.fixture
def api(kube: Any, namespace: str, crds: None) -> Api:
    return Api(kube, namespace)


def test_the_valid_baseline_is_accepted_as_sent(api: Api) -> None:
    # Every bad case is this spec with one change, so this is what makes them able to fail.
    spec = valid_spec()
    created = api.create(manifest("good", spec))
    assert created["spec"] == spec
    assert api.get("good")["spec"] == spec


def test_a_full_spec_is_accepted_without_pruning(api: Api) -> None:
    spec = {
        **valid_spec(),
        "algorithm": "CIMRL",
        "environment": {"id": "highway-fast-v0", "numEnvs": 8, "config": {"lanes": 4}},
        "training": {"totalSteps": 10**6, "seed": 42, "checkpointEvery": 50000, "evalEvery": 5000},
        "evaluation": {"episodes": 20},
        "objective": {"metric": "pdm_score", "mode": "max"},
        "initFrom": {"experiment": "cimrl-bc", "checkpoint": "latest"},
        "expertData": "s3://datasets/highway/expert-v1/",
        "sweep": {
            "numSamples": 16,
            "maxConcurrentTrials": 4,
            "searchAlgorithm": "tpe",
            "scheduler": {"type": "asha", "gracePeriod": 2, "reductionFactor": 3},
            "parameters": {
                "learningRate": {"logUniform": [1.0e-5, 1.0e-3]},
                "batchSize": {"choice": [32, 48, 64]},
                "gamma": {"uniform": [0.9, 0.999]},
                "nSteps": {"randint": [64, 512]},
                "policy": {"grid": ["mlp", "cnn"]},
            },
            "rayCluster": {"workers": 2, "gpusPerWorker": 1},
        },
        # One node: each trial of a sweep runs on one (nodes > 1 is for single runs).
        "resources": {"gpus": 1, "cpu": 4, "memory": "16Gi", "nodes": 1},
        "trainer": {
            "image": "registry.example.org/lab/trainer:1",
            "command": ["python", "-m", "lab.train"],
            "args": ["--fast"],
            "env": [{"name": "OMP_NUM_THREADS", "value": "4"}],
        },
        "source": {
            "repository": "https://example.org/lab.git",
            "revision": "main",
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "dirty": True,
        },
        "storage": {"bucket": "experiments", "secretRef": "kexp-s3", "prefix": "team-a"},
        "retry": {"backoffLimit": 0, "activeDeadlineSeconds": 86400},
    }
    assert api.create(manifest("full", spec))["spec"] == spec


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_a_bad_spec_is_refused_naming_the_field(api: Api, case: Bad) -> None:
    code, status, text = refused(lambda: api.create(manifest("bad", edited(case.edits))))
    assert code == 422, text
    assert status["reason"] == "Invalid", text
    assert_cause(status, text, case.field, case.says, case.reason)


@pytest.mark.parametrize("name", ["a" * 64, "ppo.highway"], ids=["64 characters", "a dot"])
def test_a_name_that_cannot_label_its_jobs_is_refused(api: Api, name: str) -> None:
    # The name becomes the kexp.io/experiment label of its Jobs and pods (63 characters at
    # most) and part of a multi-node run's pod hostnames (no dots).
    code, status, text = refused(lambda: api.create(manifest(name, valid_spec())))
    assert code == 422, text
    assert status["reason"] == "Invalid", text
    assert "metadata.name: at most 63 characters and no dots" in status["message"], text


def test_a_63_character_name_is_accepted_and_stays_writable(api: Api) -> None:
    name = "a" * 63
    api.create(manifest(name, valid_spec()))
    api.patch(name, {"spec": {"description": "edited"}, "metadata": {"labels": {"x": "y"}}})
    api.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, api.ns, PLURAL, name, {"status": {"phase": "Pending"}}
    )
    got = api.get(name)
    assert got["spec"]["description"] == "edited"
    assert got["status"]["phase"] == "Pending"


@pytest.mark.parametrize("case", UNKNOWN, ids=[c.id for c in UNKNOWN])
def test_an_unknown_field_is_refused_under_strict_validation(api: Api, case: Bad) -> None:
    code, status, text = refused(lambda: api.create(manifest("bad", edited(case.edits))))
    assert code == 400, text
    assert status["reason"] == "BadRequest", text
    assert f'unknown field "{case.field}"' in status["message"], text


# ---- immutability ----------------------------------------------------------------------------


@pytest.fixture
def submitted(api: Api) -> str:
    api.create(manifest("run", valid_spec()))
    return "run"


def test_the_algorithm_cannot_change(api: Api, submitted: str) -> None:
    code, status, text = refused(lambda: api.patch(submitted, {"spec": {"algorithm": "SAC"}}))
    assert code == 422, text
    assert_cause(status, text, "spec.algorithm", "spec.algorithm is immutable")
    assert api.get(submitted)["spec"]["algorithm"] == "PPO"


def test_a_hyperparameter_cannot_change(api: Api, submitted: str) -> None:
    patch = {"spec": {"hyperparameters": {"learningRate": 1.0e-3}}}
    code, status, text = refused(lambda: api.patch(submitted, patch))
    assert code == 422, text
    immutable = "spec.hyperparameters is immutable"
    assert_cause(status, text, "spec.hyperparameters", immutable)
    assert api.get(submitted)["spec"]["hyperparameters"]["learningRate"] == 3.0e-4


def test_a_section_cannot_be_added(api: Api, submitted: str) -> None:
    patch = {"spec": {"initFrom": {"experiment": "bc-warmup"}}}
    code, status, text = refused(lambda: api.patch(submitted, patch))
    assert code == 422, text
    added = "spec.initFrom cannot be added or removed"
    assert_cause(status, text, "spec.initFrom", added)
    assert "initFrom" not in api.get(submitted)["spec"]


def test_a_section_cannot_be_removed(api: Api, submitted: str) -> None:
    code, status, text = refused(lambda: api.patch(submitted, {"spec": {"source": None}}))
    assert code == 422, text
    removed = "spec.source cannot be added or removed"
    assert_cause(status, text, "spec.source", removed)
    assert api.get(submitted)["spec"]["source"] == valid_spec()["source"]


def test_an_unknown_field_in_a_patch_is_refused_under_strict_validation(
    api: Api, submitted: str
) -> None:
    code, status, text = refused(lambda: api.patch(submitted, {"spec": {"learningrate": 1}}))
    # Unlike a create (400, BadRequest), a patch reports strict decoding as 422 on "patch".
    assert code == 422, text
    assert 'unknown field "spec.learningrate"' in status["message"], text


def test_without_strict_validation_an_unknown_field_is_dropped_silently(api: Api) -> None:
    # Why every request here asks for Strict: without it a typo costs the setting, not an error.
    body = manifest("lax", edited({"learningrate": 1}))
    created = api.custom.create_namespaced_custom_object(GROUP, VERSION, api.ns, PLURAL, body)
    assert "learningrate" not in created["spec"]


def test_description_and_tags_can_change(api: Api, submitted: str) -> None:
    before = api.get(submitted)
    patch = {"spec": {"description": "baseline, rerun on the new cluster", "tags": ["a", "b"]}}
    api.patch(submitted, patch)
    after = api.get(submitted)
    assert after["spec"]["description"] == "baseline, rerun on the new cluster"
    assert after["spec"]["tags"] == ["a", "b"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    unchanged = {k: v for k, v in after["spec"].items() if k not in ("description", "tags")}
    assert unchanged == {k: v for k, v in valid_spec().items() if k not in ("description", "tags")}


# ---- templates -------------------------------------------------------------------------------


def test_a_template_may_hold_a_partial_spec(api: Api) -> None:
    spec = {"hyperparameters": {"learningRate": 1.0e-4}}
    created = api.create(manifest("lr-only", spec, kind=TEMPLATE), plural=TEMPLATES)
    assert created["spec"] == spec


def test_a_template_with_an_unknown_algorithm_is_refused(api: Api) -> None:
    body = manifest("dqn", {"algorithm": "DQN"}, kind=TEMPLATE)
    code, status, text = refused(lambda: api.create(body, plural=TEMPLATES))
    assert code == 422, text
    assert_cause(status, text, "spec.algorithm", '"DQN"', UNSUPPORTED)


# ---- kubectl ---------------------------------------------------------------------------------


def kubectl(stack: Stack, tmp_path: Path, *args: str) -> str:
    # A fresh discovery cache: one cached before the CRDs existed would not know them.
    cmd = [str(stack.bin_dir / "kubectl"), f"--cache-dir={tmp_path / 'kube-cache'}", *args]
    env = {**os.environ, "KUBECONFIG": str(stack.kubeconfig)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kubectl_explain_prints_the_model_descriptions(
    stack: Stack, crds: None, tmp_path: Path
) -> None:
    # kubectl wraps descriptions at its terminal width, so compare with whitespace collapsed.
    out = " ".join(kubectl(stack, tmp_path, "explain", "experiment.spec.training").split())
    # The section's own description is its field's in the spec, not the Training docstring.
    described = [
        models.ExperimentSpec.model_fields["training"].description,
        *(models.Training.model_fields[name].description for name in ("total_steps", "seed")),
    ]
    for text in described:
        assert text, "the model lost a description"
        assert " ".join(text.split()) in out, out
    assert "totalSteps <integer>" in out, out


def test_kubectl_get_wide_shows_the_printer_columns(api: Api, stack: Stack, tmp_path: Path) -> None:
    api.create(manifest("cols", valid_spec()))
    header, *rows = kubectl(stack, tmp_path, "get", "exp", "-o", "wide", "-n", api.ns).splitlines()
    assert header.split() == ["NAME", "PHASE", "ALGO", "ENV", "PROGRESS", "SCORE", "COMMIT", "AGE"]
    # Status columns are blank until an operator writes status, so split() would shift the
    # cells; read them at the header's offsets instead.
    (row,) = rows
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    cells = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    # ALGO and ENV come from status too (an Experiment may take them from its template).
    assert cells[:7] == ["cols", "", "", "", "", "", ""]
    assert cells[7], "AGE is empty"


def test_there_are_at_least_thirty_distinct_bad_cases() -> None:
    ids = [c.id for c in BAD + UNKNOWN]
    assert len(ids) == len(set(ids)) >= 30
