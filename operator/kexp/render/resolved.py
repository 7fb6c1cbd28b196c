"""The input of every renderer: an Experiment with its template merged and defaults applied."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kexp.api import contract


@dataclass(frozen=True)
class ResolvedExperiment:
    """One Experiment as the renderers see it.

    ``spec`` is camelCase, as on the wire, with the template merged under it and the models'
    defaults filled in. ``init_checkpoint`` is the S3 URI of the checkpoint that
    ``spec.initFrom`` resolved to, once it has.
    """

    name: str
    namespace: str
    uid: str
    spec: dict[str, Any]
    annotations: dict[str, str] = field(default_factory=dict)
    init_checkpoint: str | None = None

    def section(self, key: str) -> dict[str, Any]:
        """A nested spec object, empty when absent."""
        value = self.spec.get(key)
        return value if isinstance(value, dict) else {}

    @property
    def tags(self) -> list[str]:
        return list(self.spec.get("tags") or [])

    @property
    def bucket(self) -> str:
        return str(self.section("storage").get("bucket") or contract.DEFAULT_BUCKET)

    @property
    def secret_name(self) -> str:
        return str(self.section("storage").get("secretRef") or contract.DEFAULT_S3_SECRET)

    @property
    def s3_prefix(self) -> str:
        custom = self.section("storage").get("prefix")
        base = contract.s3_prefix(self.namespace, self.name, self.uid)
        return f"{str(custom).strip('/')}/{base}" if custom else base

    @property
    def nodes(self) -> int:
        return int(self.section("resources").get("nodes") or 1)

    @property
    def gpus(self) -> int:
        return int(self.section("resources").get("gpus") or 0)

    def owner_reference(self) -> dict[str, Any]:
        """Makes a child garbage-collected with the Experiment (and shown as its child)."""
        return {
            "apiVersion": "kexp.io/v1alpha1",
            "kind": "Experiment",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def init_checkpoint_uri(namespace: str, init_from: dict[str, Any], ref: dict[str, Any]) -> str:
    """The S3 URI ``spec.initFrom`` points at, given the experiment it names (as read).

    The harvested URI when there is one; before harvest, where the contract's layout puts it.
    """
    which = init_from.get("checkpoint") or "best"
    checkpoints = (ref.get("status") or {}).get("checkpoints") or {}
    if checkpoints.get(which):
        return str(checkpoints[which])
    ref_spec = ref.get("spec") or {}
    bucket = (ref_spec.get("storage") or {}).get("bucket") or contract.DEFAULT_BUCKET
    prefix = contract.s3_prefix(namespace, ref["metadata"]["name"], ref["metadata"]["uid"])
    key = contract.BEST_CHECKPOINT if which == "best" else contract.LATEST_POINTER
    return contract.s3_uri(str(bucket), prefix + key)
