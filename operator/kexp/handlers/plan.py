"""One reconcile pass, decided as a pure function: from what is observed to what to write.

``plan_pass`` gets the Experiment and what the operator's watches hold (its template, its
Job, its pods, the experiments it may wait for) and returns the labels to set, the children
to create-if-absent, the complete new status and the Events to post. The handlers only
gather inputs and carry the plan out, so every decision here is unit-tested without a
cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from kexp.api import contract
from kexp.api.reports import ProgressReport, ResultsReport, SweepReport
from kexp.render import names
from kexp.render.resolved import ResolvedExperiment, init_checkpoint_uri
from kexp.render.settings import RenderSettings
from kexp.render.sweep import uses_ray_cluster
from kexp.render.training import render_children
from kexp.status import sweep as sweeps
from kexp.status.conditions import condition, set_condition
from kexp.status.harvest import failure_message, harvested_fields
from kexp.status.progress import progress_status, stalled_for
from kexp.status.training import (
    STARTING_MESSAGE,
    STUCK_WAITING_REASONS,
    TrainingState,
    pod_problem,
    training_state,
)

TERMINAL: Final = frozenset({"Succeeded", "Failed"})
#: Pending reasons worth a Warning event: they will not resolve without the user.
PROBLEM_REASONS: Final = STUCK_WAITING_REASONS | {
    "Unschedulable",
    "SourceUnresolved",
    "TemplateNotFound",
    "InvalidSpec",
    "TrainerFailed",
    "KubeRayMissing",
    "S3SecretMissing",
    "S3SecretForbidden",
    "AllTrialsFailed",
}
#: Reasons a run waits for its S3 Secret (re-checked: the operator does not watch Secrets).
STORAGE_REASONS: Final = ("S3SecretMissing", "S3SecretForbidden")
KUBERAY_MISSING: Final = (
    "spec.sweep.rayCluster needs KubeRay, and this cluster does not serve RayJobs "
    f"({contract.RAY_GROUP}/{contract.RAY_VERSION}); install KubeRay, or remove rayCluster to "
    "run the sweep in one pod"
)

Validator = Callable[[dict[str, Any]], dict[str, Any]]
Merger = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
Hasher = Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class ApiFunctions:
    """The API-model functions a pass needs (kept injectable so plans are testable alone)."""

    validate: Validator
    merge_template: Merger
    config_hash: Hasher


@dataclass(frozen=True)
class Observed:
    """What the watches hold for one Experiment at the start of a pass."""

    template_spec: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    experiments: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    resolved_commit: str | None = None
    source_error: str | None = None
    #: What the trainer wrote to results.json, read once the Job has ended.
    results: ResultsReport | None = None
    #: Why results could not be harvested (e.g. no results.json), when they could not.
    results_error: str | None = None
    #: The trainer's latest heartbeat, read while the run is Running.
    progress: ProgressReport | None = None
    #: A heartbeat older than this many seconds marks the run Stalled.
    stall_after_s: float = 600.0
    #: A sweep's sweep.json, read while it runs and when its workload has ended.
    sweep: SweepReport | None = None
    #: The RayJob of a sweep on its own Ray cluster (spec.sweep.rayCluster).
    ray_job: dict[str, Any] | None = None
    #: Whether the cluster serves KubeRay's RayJob; None when it was not asked.
    kuberay: bool | None = None
    #: Why the run's S3 credentials cannot be read (a missing Secret), asked before the
    #: workload is created: a pod that mounts a missing Secret would wait without a word.
    storage_error: StorageError | None = None


@dataclass(frozen=True)
class StorageError:
    """Why a run's S3 Secret cannot be read: a reason (one of STORAGE_REASONS) and a message."""

    reason: str
    message: str


@dataclass
class Plan:
    """What one pass will do, in order: labels, children, one status write, Events."""

    labels: dict[str, str | None] = field(default_factory=dict)
    create: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)


class SpecProblem(Exception):
    """The resolved spec is unusable; ``phase`` says whether waiting can fix it."""

    def __init__(self, reason: str, message: str, phase: str = "Pending") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.phase = phase


def wanted_labels(meta: dict[str, Any], spec: dict[str, Any]) -> dict[str, str | None]:
    """Label changes that mirror tags, the template and ``initFrom`` onto the Experiment."""
    current: dict[str, str] = dict(meta.get("labels") or {})
    want: dict[str, str] = names.tag_labels(list(spec.get("tags") or []))
    if spec.get("templateRef"):
        want[contract.LABEL_TEMPLATE] = str(spec["templateRef"])
    init_from = (spec.get("initFrom") or {}).get("experiment")
    if init_from:
        want[contract.LABEL_INIT_FROM] = str(init_from)
    changes: dict[str, str | None] = {k: v for k, v in want.items() if current.get(k) != v}
    managed = (contract.LABEL_TAG_PREFIX, contract.LABEL_TEMPLATE, contract.LABEL_INIT_FROM)
    for key in current:
        if key.startswith(managed) and key not in want:
            changes[key] = None
    return changes


def may_defer_status(status: dict[str, Any], observed: Observed) -> bool:
    """Whether this status may wait in the operator's memory while it is behind.

    Only a run whose workload exists and is under way: its Job or RayJob is in the API server,
    so the status can be recomputed from it after a restart, and a pass follows on its next
    event or flush anyway. A commit just resolved from a branch is written at once (a restart
    would resolve the branch again, maybe to another commit), and so is anything the user must
    act on (a problem reason) and a finished record.
    """
    started = (condition(status.get("conditions") or [], "JobCreated") or {}).get("status")
    return (
        started == "True"
        and status.get("phase") in ("Pending", "Running")
        and status.get("reason") not in PROBLEM_REASONS
        and observed.resolved_commit is None
    )


def _init_from_chain(name: str, first: str, experiments: Mapping[str, dict[str, Any]]) -> str:
    """Raise SpecProblem when following ``initFrom`` from ``name`` comes back to it."""
    chain = [name]
    current: str | None = first
    while current:
        chain.append(current)
        if current == name:
            raise SpecProblem(
                "InitFromCycle",
                f"spec.initFrom.experiment forms a cycle: {' -> '.join(chain)}",
                phase="Failed",
            )
        if current in chain[:-1]:
            break  # a cycle further along, not through this experiment: its members report it
        body = experiments.get(current)
        current = ((body or {}).get("spec", {}).get("initFrom") or {}).get("experiment")
    return first


def _provenance(
    body: dict[str, Any],
    merged: dict[str, Any] | None,
    observed: Observed,
    api: ApiFunctions,
    settings: RenderSettings,
) -> dict[str, Any]:
    old = dict((body.get("status") or {}).get("provenance") or {})
    source = (merged or body.get("spec") or {}).get("source") or {}
    prov: dict[str, Any] = {**old, "submittedAt": body["metadata"].get("creationTimestamp")}
    commit = source.get("commit") or observed.resolved_commit or old.get("gitCommit")
    revision = source.get("revision")
    if commit:
        prov["gitCommit"] = commit
    if revision and revision != commit:
        prov["gitBranch"] = revision
    if "dirty" in source:
        prov["gitDirty"] = bool(source["dirty"])
    if source.get("repository"):
        prov["repository"] = source["repository"]
    if merged is not None:
        prov["configHash"] = api.config_hash(merged)
        prov["image"] = (merged.get("trainer") or {}).get("image") or settings.trainer_image
    return {k: v for k, v in prov.items() if v is not None}


def _phase_events(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    old_phase, new_phase = old.get("phase"), new.get("phase")
    old_reason = (old.get("reason") or "") if old else ""
    reason = new.get("reason") or new_phase or ""
    message = new.get("message") or ""
    if old_phase == new_phase and old_reason == reason:
        return []
    kind = "Warning" if new_phase == "Failed" or reason in PROBLEM_REASONS else "Normal"
    return [(kind, reason, message)]


def plan_pass(
    body: dict[str, Any],
    observed: Observed,
    *,
    api: ApiFunctions,
    settings: RenderSettings,
    now: str,
) -> Plan:
    """Decide one reconcile pass of ``body`` (an Experiment as read from the API)."""
    meta = body["metadata"]
    spec: dict[str, Any] = body.get("spec") or {}
    old: dict[str, Any] = body.get("status") or {}
    generation = meta.get("generation")
    plan = Plan(labels=wanted_labels(meta, spec))
    # Shallow is enough: the pass replaces nested values, it never edits them in place.
    status: dict[str, Any] = dict(old)
    status["observedGeneration"] = generation
    conditions: list[dict[str, Any]] = list(status.get("conditions") or [])

    def cond(type_: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions, type_, ok, reason, message, now=now, generation=generation
        )

    def finish(phase: str, reason: str, message: str) -> Plan:
        status.update({"phase": phase, "reason": reason, "message": message})
        status["conditions"] = conditions
        plan.status = status
        plan.events += _phase_events(old, status)
        return plan

    if old.get("phase") in TERMINAL:
        # A finished experiment is a record: nothing re-runs it, even if its Job is deleted.
        plan.status = status
        return plan

    merged: dict[str, Any] | None = None
    try:
        merged = _resolve_spec(spec, observed, api)
        init_checkpoint = _resolve_init_from(meta, merged, observed, old)
    except SpecProblem as problem:
        status["provenance"] = _provenance(body, merged, observed, api, settings)
        if problem.reason.startswith("Waiting"):
            cond("Validated", True, "Valid", "the spec is valid")
            cond("InitFromReady", False, problem.reason, problem.message)
            return finish("Waiting", problem.reason, problem.message)
        cond("Validated", False, problem.reason, problem.message)
        return finish(problem.phase, problem.reason, problem.message)

    cond("Validated", True, "Valid", "the spec is valid")
    status["algorithm"] = merged.get("algorithm")
    env_id = (merged.get("environment") or {}).get("id")
    if env_id:
        status["environment"] = env_id
    if init_checkpoint:
        cond("InitFromReady", True, "CheckpointResolved", f"warm-starting from {init_checkpoint}")
    prov = _provenance(body, merged, observed, api, settings)
    if init_checkpoint:
        prov["initFromCheckpoint"] = init_checkpoint
    if observed.source_error:
        cond("SourceResolved", False, "SourceUnresolved", observed.source_error)
    elif prov.get("gitCommit"):
        cond("SourceResolved", True, "CommitKnown", f"commit {prov['gitCommit']}")

    is_sweep = bool(merged.get("sweep"))
    on_ray = is_sweep and uses_ray_cluster(merged)
    workload = names.workload_name(meta["name"], merged)
    what = "RayJob" if on_ray else ("sweep Job" if is_sweep else "training Job")
    child = observed.ray_job if on_ray else observed.job
    job_was_created = (condition(conditions, "JobCreated") or {}).get("status") == "True"
    if child is None and job_was_created:
        status["provenance"] = prov
        return finish("Failed", "JobDeleted", f"the {what} {workload} was deleted")
    if on_ray and child is None and observed.kuberay is False:
        status["provenance"] = prov
        return finish("Pending", "KubeRayMissing", KUBERAY_MISSING)
    if child is None and observed.storage_error:
        status["provenance"] = prov
        unreadable = observed.storage_error
        cond("StorageReady", False, unreadable.reason, unreadable.message)
        return finish("Pending", unreadable.reason, unreadable.message)
    if child is None and condition(conditions, "StorageReady"):
        # Only a run that once waited for its Secret carries the condition.
        cond("StorageReady", True, "S3SecretFound", "the S3 Secret exists")

    state: TrainingState
    if child is None:
        resolved = ResolvedExperiment(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            spec=merged,
            annotations=dict(meta.get("annotations") or {}),
            init_checkpoint=init_checkpoint,
        )
        plan.create = render_children(resolved, settings)
        state = TrainingState("Pending", "JobCreated", STARTING_MESSAGE)
    elif on_ray:
        state = _ray_state(child, observed.pods)
    else:
        state = training_state(child, observed.pods)
        if is_sweep and state.phase == "Running":
            state = TrainingState(
                "Running", state.reason, sweeps.SWEEP_RUNNING_MESSAGE, state.started_at
            )
    cond("JobCreated", True, "JobCreated", f"{what} {workload}")
    status["jobs"] = {**(status.get("jobs") or {}), "train": workload}
    if state.started_at and state.phase != "Pending":
        # Recorded with the move out of Pending, not on its own: one status write fewer.
        prov["startedAt"] = state.started_at
    if state.completed_at:
        prov["completedAt"] = state.completed_at
    status["provenance"] = prov
    running = state.phase == "Running"
    cond("Running", running, state.reason, state.message)
    if is_sweep:
        if running and observed.sweep is not None:
            _sweep_heartbeat(status, observed, now, cond)
        if state.phase in TERMINAL:
            state = _harvest(status, merged, observed, state, cond)
            state = _harvest_sweep(status, observed, state, cond)
            cond("Completed", state.phase == "Succeeded", state.reason, state.message)
        return finish(state.phase, state.reason, state.message)
    if running and observed.progress is not None:
        status["progress"] = progress_status(observed.progress)
        age = stalled_for(observed.progress, now, observed.stall_after_s)
        if age is not None:
            cond(
                "Stalled",
                True,
                "NoHeartbeat",
                f"no progress heartbeat for {age:.0f}s (last at step {observed.progress.step})",
            )
        else:
            cond("Stalled", False, "Heartbeat", f"step {observed.progress.step}")
    if state.phase in TERMINAL:
        cond("Completed", state.phase == "Succeeded", state.reason, state.message)
        state = _harvest(status, merged, observed, state, cond)
    return finish(state.phase, state.reason, state.message)


def _harvest(
    status: dict[str, Any],
    merged: dict[str, Any],
    observed: Observed,
    state: TrainingState,
    cond: Callable[[str, bool, str, str], None],
) -> TrainingState:
    """Results, score and checkpoints from the trainer's results.json into status."""
    report = observed.results
    if report is None:
        if observed.results_error:
            cond("Harvested", False, "ResultsMissing", observed.results_error)
        return state
    fields = harvested_fields(report, merged)
    status["provenance"] = {**(status.get("provenance") or {}), **fields.pop("provenance")}
    status.update(fields)
    cond("Harvested", True, "ResultsHarvested", f"{len(fields['results'])} score(s) harvested")
    failure = failure_message(report)
    if failure is not None:
        return TrainingState(
            "Failed", "TrainerFailed", failure, state.started_at, state.completed_at
        )
    return state


def _ray_state(ray_job: dict[str, Any], pods: list[dict[str, Any]]) -> TrainingState:
    """The RayJob's phase; while it is starting, a pod that cannot start says why."""
    state = sweeps.ray_job_state(ray_job)
    problem = pod_problem(pods) if state.phase == "Pending" else None
    if problem is not None:
        return TrainingState("Pending", problem[0], problem[1], state.started_at)
    return state


def _sweep_heartbeat(
    status: dict[str, Any],
    observed: Observed,
    now: str,
    cond: Callable[[str, bool, str, str], None],
) -> None:
    """status.sweep and status.progress from a running sweep's sweep.json; Stalled when it
    stopped being rewritten."""
    report = observed.sweep
    if report is None:
        return
    status["sweep"] = sweeps.sweep_status(report)
    status["progress"] = sweeps.sweep_progress(report)
    age = sweeps.heartbeat_age(report, now)
    if age > observed.stall_after_s:
        cond("Stalled", True, "NoHeartbeat", f"no sweep report for {age:.0f}s")
    else:
        cond("Stalled", False, "Heartbeat", "the sweep reports")


def _harvest_sweep(
    status: dict[str, Any],
    observed: Observed,
    state: TrainingState,
    cond: Callable[[str, bool, str, str], None],
) -> TrainingState:
    """The final sweep.json into status.sweep; a sweep whose every trial failed is Failed
    with the first error."""
    report = observed.sweep
    if report is None:
        return state
    status["sweep"] = sweeps.sweep_status(report)
    status["progress"] = sweeps.sweep_progress(report)
    failure = sweeps.failure_message(report)
    if failure is not None:
        reason = "AllTrialsFailed" if sweeps.all_failed(report) else "SweepFailed"
        cond("TrialsSucceeded", False, reason, failure)
        if reason == "SweepFailed" and state.phase == "Failed":
            return state  # the harvest's reason (TrainerFailed, naming the field) says more
        return TrainingState("Failed", reason, failure, state.started_at, state.completed_at)
    cond("TrialsSucceeded", True, "BestTrialFound", sweeps.sweep_summary(report))
    if state.phase == "Succeeded":
        return TrainingState(
            "Succeeded",
            state.reason,
            sweeps.sweep_summary(report),
            state.started_at,
            state.completed_at,
        )
    return state


def _resolve_spec(spec: dict[str, Any], observed: Observed, api: ApiFunctions) -> dict[str, Any]:
    merged = spec
    ref = spec.get("templateRef")
    if ref:
        if observed.template_spec is None:
            raise SpecProblem(
                "TemplateNotFound",
                f"spec.templateRef: ExperimentTemplate {ref!r} not found in this namespace",
            )
        merged = api.merge_template(observed.template_spec, spec)
    try:
        return api.validate(merged)
    except ValueError as exc:
        origin = f" (after merging template {ref!r})" if ref else ""
        raise SpecProblem("InvalidSpec", f"invalid spec{origin}: {exc}") from exc


def _resolve_init_from(
    meta: dict[str, Any], merged: dict[str, Any], observed: Observed, old: dict[str, Any]
) -> str | None:
    init_from = merged.get("initFrom") or {}
    ref_name = init_from.get("experiment")
    if not ref_name:
        return None
    known = (old.get("provenance") or {}).get("initFromCheckpoint")
    if known:
        return str(known)  # fixed once the Job was rendered with it
    _init_from_chain(meta["name"], ref_name, observed.experiments)
    ref = observed.experiments.get(ref_name)
    if ref is None:
        raise SpecProblem(
            "WaitingForExperiment",
            f"waiting for experiment {ref_name!r} (spec.initFrom.experiment) to be created",
        )
    ref_phase = (ref.get("status") or {}).get("phase") or "Pending"
    if ref_phase == "Failed":
        raise SpecProblem(
            "InitFromFailed",
            f"experiment {ref_name!r} (spec.initFrom.experiment) failed; nothing to start from",
            phase="Failed",
        )
    if ref_phase != "Succeeded":
        raise SpecProblem(
            "WaitingForExperiment",
            f"waiting for experiment {ref_name!r} (spec.initFrom.experiment) to succeed; "
            f"it is {ref_phase}",
        )
    return init_checkpoint_uri(meta["namespace"], init_from, ref)
