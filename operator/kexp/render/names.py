"""Deterministic names and labels of an Experiment's children.

Names are derived from the Experiment's name alone, so a handler that runs twice (after a
crash, or on two events at once) computes the same name and the API server's 409 turns the
second create into a no-op: an Experiment never gets a second Job.
"""

from __future__ import annotations

import hashlib
from typing import Final

from kexp.api import contract

#: Job names become the ``job-name`` label and pod hostnames: 63 characters at most.
MAX_CHILD_NAME: Final = 63


def child_name(experiment: str, suffix: str) -> str:
    """``<experiment>-<suffix>``, shortened with a stable hash when it would exceed 63 chars."""
    name = f"{experiment}-{suffix}"
    if len(name) <= MAX_CHILD_NAME:
        return name
    digest = hashlib.sha256(experiment.encode()).hexdigest()[:8]
    keep = MAX_CHILD_NAME - len(suffix) - len(digest) - 2
    return f"{experiment[:keep].rstrip('-.')}-{digest}-{suffix}"


def train_job_name(experiment: str) -> str:
    return child_name(experiment, "train")


def sweep_name(experiment: str) -> str:
    """The sweep's workload: a Job (one pod runs Ray Tune) or a KubeRay RayJob."""
    return child_name(experiment, "sweep")


def workload_name(experiment: str, spec: dict[str, object]) -> str:
    """The Experiment's main child: its sweep when it has ``spec.sweep``, else its training Job."""
    return sweep_name(experiment) if spec.get("sweep") else train_job_name(experiment)


def config_map_name(experiment: str) -> str:
    return child_name(experiment, "config")


def rendezvous_service_name(experiment: str) -> str:
    return child_name(experiment, "ddp")


def tag_labels(tags: list[str]) -> dict[str, str]:
    """``kexp.io/tag.<tag>: "true"`` for each tag, so ``kubectl get exp -l`` filters by tag."""
    return {f"{contract.LABEL_TAG_PREFIX}{tag}": "true" for tag in tags}


def child_labels(experiment: str, role: str) -> dict[str, str]:
    """Labels on every object an Experiment owns; the operator watches by them."""
    return {
        contract.LABEL_EXPERIMENT: experiment,
        contract.LABEL_ROLE: role,
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
    }
