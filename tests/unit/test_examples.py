"""The shipped templates and examples are valid, and every example resolves to a runnable spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kexp.api.models import Experiment, ExperimentTemplate, merge_template
from kexp.api.validation import validate_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUIRED_TEMPLATES = {
    "ppo-highway",
    "sac-highway",
    "bc-highway",
    "gail-highway",
    "cimrl-highway",
    "cartpole-smoke",
}


def load(folder: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((EXAMPLES / folder).glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


TEMPLATES = {t["metadata"]["name"]: t for t in load("templates")}
EXPERIMENTS = load("experiments")


def test_every_template_the_docs_promise_is_shipped() -> None:
    assert set(TEMPLATES) >= REQUIRED_TEMPLATES


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_template_is_valid_and_complete_on_its_own(name: str) -> None:
    template = ExperimentTemplate.model_validate(TEMPLATES[name])
    # A template alone is a full spec: an Experiment may name it and change nothing.
    resolved = validate_spec(template.spec.to_wire())
    assert resolved["algorithm"] == TEMPLATES[name]["spec"]["algorithm"]


@pytest.mark.parametrize("doc", EXPERIMENTS, ids=lambda d: d["metadata"]["name"])
def test_example_experiment_resolves_against_its_template(doc: dict[str, Any]) -> None:
    Experiment.model_validate(doc)
    spec = doc["spec"]
    template = TEMPLATES[spec["templateRef"]]["spec"] if spec.get("templateRef") else {}
    resolved = validate_spec(merge_template(template, spec))
    for key, value in (spec.get("hyperparameters") or {}).items():
        assert resolved["hyperparameters"][key] == value  # the Experiment's own values win
