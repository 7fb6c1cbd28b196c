"""The CRDs generated from the models: structural, complete, and the same as the committed files."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from kexp.api import crd, models

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = f"{models.EXPERIMENT_PLURAL}.{models.GROUP}.yaml"
TEMPLATES = f"{models.TEMPLATE_PLURAL}.{models.GROUP}.yaml"
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


@pytest.fixture(scope="module")
def generated() -> dict[str, dict[str, Any]]:
    return {name: yaml.safe_load(text) for name, text in crd.generate().items()}


def schema_of(doc: dict[str, Any]) -> dict[str, Any]:
    (version,) = doc["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def spec_schema(generated: dict[str, dict[str, Any]], name: str = EXPERIMENTS) -> dict[str, Any]:
    spec: dict[str, Any] = schema_of(generated[name])["properties"]["spec"]
    return spec


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under ``node`` (itself included), with its path."""
    yield path, node
    for name, prop in node.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def all_nodes(generated: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, doc in generated.items():
        for path, node in walk(schema_of(doc)):
            yield f"{name}:{path}", node


def test_the_generator_writes_both_crds(generated: dict[str, dict[str, Any]]) -> None:
    assert set(generated) == {EXPERIMENTS, TEMPLATES}
    for doc in generated.values():
        assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
        assert doc["kind"] == "CustomResourceDefinition"
        assert doc["metadata"]["name"] == f"{doc['spec']['names']['plural']}.kexp.io"


def test_every_schema_node_is_structural(generated: dict[str, dict[str, Any]]) -> None:
    forbidden = {"$ref", "$defs", "allOf", "oneOf", "not", "title", "prefixItems", "const"}
    for path, node in all_nodes(generated):
        assert not forbidden & set(node), path
        # The one anyOf a structural schema allows: x-kubernetes-int-or-string's.
        if "anyOf" in node:
            assert node["anyOf"] == INT_OR_STRING, path
            assert node.get("x-kubernetes-int-or-string") is True, path
        if "properties" in node or "additionalProperties" in node:
            assert node.get("type") == "object", path
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), path
        untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        )
        assert node.get("type") or untyped_ok, f"{path} has no type"
        # Defaults would be filled in before the operator merges the template (see crd.py).
        assert "default" not in node, path
        assert node.get("additionalProperties") is not False, path


def test_every_property_has_a_description(generated: dict[str, dict[str, Any]]) -> None:
    for path, node in all_nodes(generated):
        for name, prop in node.get("properties", {}).items():
            if path.endswith(":") and name == "metadata":
                continue  # the API server refuses anything but a type on the root's metadata
            assert prop.get("description", "").strip(), f"{path}.{name}"
            assert "\n" not in prop["description"], f"{path}.{name}"


def test_documented_defaults_appear_in_descriptions(
    generated: dict[str, dict[str, Any]],
) -> None:
    spec = spec_schema(generated)
    assert spec["properties"]["resources"]["properties"]["memory"]["description"].endswith(
        "Defaults to 4Gi."
    )
    assert spec["properties"]["objective"]["properties"]["mode"]["description"].endswith(
        "Defaults to max."
    )


def test_names_versions_and_printer_columns(generated: dict[str, dict[str, Any]]) -> None:
    exp = generated[EXPERIMENTS]["spec"]
    assert exp["group"] == "kexp.io"
    assert exp["scope"] == "Namespaced"
    assert exp["names"] == {
        "kind": "Experiment",
        "listKind": "ExperimentList",
        "plural": "experiments",
        "singular": "experiment",
        "shortNames": ["exp"],
        "categories": ["kexp"],
    }
    (version,) = exp["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {
        c["name"].upper(): (c["jsonPath"], c["type"]) for c in version["additionalPrinterColumns"]
    }
    assert columns == {
        "PHASE": (".status.phase", "string"),
        "ALGO": (".status.algorithm", "string"),
        "ENV": (".status.environment", "string"),
        "PROGRESS": (".status.progress.percent", "number"),
        "SCORE": (".status.score", "number"),
        "COMMIT": (".status.provenance.gitCommit", "string"),
        "AGE": (".metadata.creationTimestamp", "date"),
    }
    template = generated[TEMPLATES]["spec"]
    assert template["names"]["shortNames"] == ["expt"]
    assert template["names"]["categories"] == ["kexp"]
    assert "status" not in schema_of(generated[TEMPLATES])["properties"]


def test_required_fields(generated: dict[str, dict[str, Any]]) -> None:
    assert schema_of(generated[EXPERIMENTS])["required"] == ["spec"]
    props = spec_schema(generated)["properties"]
    # Optional in the schema so an Experiment can override part of its template's section;
    # spec-level CEL rules require them when there is no template.
    assert "required" not in props["training"]
    assert "required" not in props["environment"]
    rules = [r["rule"] for r in spec_schema(generated)["x-kubernetes-validations"]]
    assert "has(self.templateRef) || (has(self.training) && has(self.training.totalSteps))" in (
        rules
    )
    assert props["sweep"]["required"] == ["parameters"]
    assert props["initFrom"]["required"] == ["experiment"]
    assert "required" not in spec_schema(generated)  # algorithm may come from a template


def test_value_bounds_reach_the_schema(generated: dict[str, dict[str, Any]]) -> None:
    props = spec_schema(generated)["properties"]
    hyper = props["hyperparameters"]
    assert hyper["x-kubernetes-preserve-unknown-fields"] is True
    assert hyper["properties"]["learningRate"] == {
        "description": hyper["properties"]["learningRate"]["description"],
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
    }
    assert hyper["properties"]["batchSize"]["type"] == "integer"
    assert hyper["properties"]["batchSize"]["minimum"] == 1
    assert props["algorithm"]["enum"] == ["PPO", "SAC", "BC", "GAIL", "CIMRL", "Custom"]
    assert props["objective"]["properties"]["mode"]["enum"] == ["min", "max"]
    assert props["resources"]["properties"]["nodes"]["minimum"] == 1
    assert props["resources"]["properties"]["cpu"]["x-kubernetes-int-or-string"] is True
    assert props["environment"]["properties"]["config"] == {
        "description": props["environment"]["properties"]["config"]["description"],
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert props["source"]["properties"]["commit"]["pattern"] == "^[0-9a-f]{40}$"
    assert props["expertData"]["pattern"].startswith("^s3://")
    assert props["tags"]["x-kubernetes-list-type"] == "set"
    space = props["sweep"]["properties"]["parameters"]["additionalProperties"]
    assert (space["minProperties"], space["maxProperties"]) == (1, 1)  # exactly one kind
    assert space["properties"]["logUniform"]["minItems"] == 2
    assert space["properties"]["logUniform"]["maxItems"] == 2
    assert space["properties"]["choice"]["minItems"] == 1


def rules(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["rule"]: r for r in node.get("x-kubernetes-validations", [])}


def test_cel_rules_on_the_spec(generated: dict[str, dict[str, Any]]) -> None:
    spec = spec_schema(generated)
    spec_rules = rules(spec)
    required = spec_rules["has(self.algorithm) || has(self.templateRef)"]
    assert required["message"] == (
        "spec.algorithm is required unless spec.templateRef names a template"
    )
    immutable = set(spec["properties"]) - models.MUTABLE_SPEC_FIELDS
    assert immutable >= {"algorithm", "sweep", "initFrom", "trainer", "resources", "templateRef"}
    for name, prop in spec["properties"].items():
        transition = rules(prop).get("self == oldSelf")
        presence = spec_rules.get(f"has(self.{name}) == has(oldSelf.{name})")
        if name in models.MUTABLE_SPEC_FIELDS:
            assert transition is None, name
            assert presence is None, name
            continue
        assert transition is not None, name
        assert transition["message"] == (
            f"spec.{name} is immutable once submitted; create a new Experiment instead"
        )
        assert presence is not None, name
        assert presence["fieldPath"] == f".{name}"
        assert f"spec.{name}" in presence["message"]


def test_cel_rules_on_parameter_spaces(generated: dict[str, dict[str, Any]]) -> None:
    space = spec_schema(generated)["properties"]["sweep"]["properties"]["parameters"][
        "additionalProperties"
    ]
    by_path = {r["fieldPath"]: r for r in space["x-kubernetes-validations"]}
    assert by_path[".logUniform"]["rule"] == (
        "!has(self.logUniform) || "
        "(self.logUniform[0] > 0.0 && self.logUniform[0] < self.logUniform[1])"
    )
    assert by_path[".uniform"]["rule"] == "!has(self.uniform) || self.uniform[0] < self.uniform[1]"
    assert by_path[".randint"]["rule"] == "!has(self.randint) || self.randint[0] < self.randint[1]"
    for path, rule in by_path.items():
        assert path.lstrip(".") in rule["message"]


def test_templates_carry_no_transition_rules(generated: dict[str, dict[str, Any]]) -> None:
    assert "oldSelf" not in yaml.safe_dump(generated[TEMPLATES])
    assert "templateRef" not in spec_schema(generated, TEMPLATES)["properties"]


# A field path after self; a name followed by "(" is a macro or method (all, exists), not a field.
FIELD_REF = re.compile(r"(?:self|oldSelf)((?:\.[A-Za-z_][A-Za-z0-9_]*\b(?!\())+)")


def test_cel_rules_only_touch_typed_and_bounded_fields(
    generated: dict[str, dict[str, Any]],
) -> None:
    # CEL cannot see an untyped field (has(self.x) on one does not compile), and the API server
    # refuses rules whose estimated cost is too high, which an unbounded list, map or string
    # makes it.
    for path, node in all_nodes(generated):
        for rule in node.get("x-kubernetes-validations", []):
            for match in FIELD_REF.finditer(rule["rule"]):
                if match.group(1) == ".metadata.name" and node is schema_of(generated[EXPERIMENTS]):
                    continue  # the API server types metadata.name for root rules itself
                target = node
                for name in match.group(1).strip(".").split("."):
                    assert name in target.get("properties", {}), f"{path}: {rule['rule']}"
                    target = target["properties"][name]
                assert target.get("type") or target.get("x-kubernetes-int-or-string"), (
                    f"{path}: {rule['rule']} uses untyped {match.group(0)}"
                )
            if "fieldPath" in rule:
                assert rule["fieldPath"].lstrip(".") in node["properties"], path
            assert rule["message"], path
    for path, node in walk(spec_schema(generated)):
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if "additionalProperties" in node:
            assert "maxProperties" in node, path
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path


def test_experiment_names_are_checked_on_create_only(
    generated: dict[str, dict[str, Any]],
) -> None:
    root_rules = schema_of(generated[EXPERIMENTS])["x-kubernetes-validations"]
    (name_rule,) = [r for r in root_rules if "metadata.name" in r["rule"]]
    # A rule at the root runs on every write, status writes included, unless it is skipped
    # when there is an old object (a name never changes).
    assert name_rule["optionalOldSelf"] is True
    assert name_rule["rule"].startswith("oldSelf.hasValue() || ")
    assert "63" in name_rule["rule"]
    assert "'.'" in name_rule["rule"]
    assert name_rule["message"].startswith("metadata.name:")


def test_committed_crds_match_the_models() -> None:
    # If this fails, run `python -m kexp.api.crd` and commit crds/.
    assert crd.check(REPO / "crds") == []


def test_main_writes_then_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crd.main(["--check", "--out-dir", str(tmp_path)]) == 1
    assert crd.main(["--out-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([EXPERIMENTS, TEMPLATES])
    assert crd.main(["--check", "--out-dir", str(tmp_path)]) == 0
    (tmp_path / EXPERIMENTS).write_text((tmp_path / EXPERIMENTS).read_text() + "# edited\n")
    capsys.readouterr()
    assert crd.main(["--check", "--out-dir", str(tmp_path)]) == 1
    assert "# edited" in capsys.readouterr().out


def test_the_generator_refuses_what_a_crd_cannot_say() -> None:
    class Union(BaseModel):
        value: int | str = Field(description="int or string, but not an int-or-string quantity")

    with pytest.raises(crd.SchemaError, match="anyOf"):
        crd.structural(Union)

    class Undocumented(BaseModel):
        value: int

    with pytest.raises(crd.SchemaError, match="description"):
        crd.structural(Undocumented)
