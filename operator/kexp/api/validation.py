"""Validation of a resolved spec with messages that name the field, as the CRD's would."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kexp.api.models import ExperimentSpec

#: Algorithms that learn from demonstrations and so need ``spec.expertData``.
IMITATION_ALGORITHMS = frozenset({"BC", "GAIL", "CIMRL"})


#: A model validator names the field at fault below its model by starting its message with
#: the field's relative path (``parameters.lr.grid: ...``); the path is joined to the loc.
_RELATIVE_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z0-9_-]+)*): ")


def describe_errors(exc: ValidationError, root: str = "spec") -> str:
    """``spec.a.b: message; spec.c: message`` from a pydantic error, one entry per problem."""
    parts = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in (root, *err["loc"]))
        message = str(err["msg"]).removeprefix("Value error, ")
        below = _RELATIVE_FIELD.match(message)
        if below is not None:
            path, message = f"{path}.{below.group(1)}", message[below.end() :]
        parts.append(f"{path}: {message}")
    return "; ".join(parts)


def validate_spec(merged: Mapping[str, Any]) -> dict[str, Any]:
    """The spec with defaults filled in (wire format); ValueError naming each bad field."""
    try:
        resolved = ExperimentSpec.model_validate(dict(merged)).to_wire()
    except ValidationError as exc:
        raise ValueError(describe_errors(exc)) from exc
    # The CRD lets an Experiment leave these to its template; after merging they must be set.
    required = [("algorithm",), ("training", "totalSteps")]
    if resolved.get("algorithm") != "Custom":
        required.append(("environment", "id"))
    for path in required:
        node: Any = resolved
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            raise ValueError(
                f"spec.{'.'.join(path)}: required, and neither the Experiment nor its "
                f"template sets it"
            )
    algorithm = resolved["algorithm"]
    if algorithm == "Custom" and not (resolved.get("trainer") or {}).get("image"):
        raise ValueError("spec.trainer.image: required when spec.algorithm is Custom")
    if algorithm in IMITATION_ALGORITHMS and not resolved.get("expertData"):
        raise ValueError(
            f"spec.expertData: required for {algorithm} (an s3:// URI of expert demonstrations)"
        )
    if resolved.get("sweep"):
        # The CRD checks these too, but a template may supply either side.
        if algorithm == "Custom":
            raise ValueError(
                "spec.sweep: a sweep runs kexp's built-in algorithms; a Custom trainer cannot "
                "be swept"
            )
        if int((resolved.get("resources") or {}).get("nodes", 1)) > 1:
            raise ValueError(
                "spec.sweep: each trial runs on one node; spec.resources.nodes must be 1"
            )
    return resolved
