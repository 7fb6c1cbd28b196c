"""kopf handlers: watch Experiments, their Jobs and pods, and reconcile level-triggered.

kopf watches the Experiments, templates and RayJobs; kexp's own informers watch the Jobs and
pods, which bring most of the events (``kexp.handlers.children``). Every event (an
Experiment changed, its Job or a pod moved, a template appeared, an experiment it waits for
finished) leads to the same pass: read the Experiment and what the
watch indexes hold, ``plan_pass`` decides, and this module carries the plan out: labels,
create-if-absent children, one status write guarded by resourceVersion (held in memory for
a while when the operator is behind: see Deferrals), Events. A pass that loses a write race
(409) re-reads and runs again. Nothing is polled; restarting the operator replays the
watches, and deterministic child names make the replay create nothing twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, cast

import kopf
from prometheus_client import start_http_server

from kexp.api import contract, models
from kexp.api.reports import ProgressReport, ResultsReport, SweepReport
from kexp.api.validation import validate_spec
from kexp.handlers.children import MANAGED_SELECTOR, ChildWatches, status_only
from kexp.handlers.metrics import OperatorMetrics
from kexp.handlers.plan import (
    STORAGE_REASONS,
    TERMINAL,
    ApiFunctions,
    Observed,
    Plan,
    StorageError,
    may_defer_status,
    plan_pass,
)
from kexp.handlers.provenance import SourceError, is_commit, resolve_revision
from kexp.handlers.watch_decoding import decode_watches_with_orjson
from kexp.kube import aio
from kexp.kube.rest import ApiError, Rest, login
from kexp.render.names import workload_name
from kexp.render.resolved import ResolvedExperiment
from kexp.render.settings import RenderSettings
from kexp.render.sweep import uses_ray_cluster
from kexp.status.harvest import results_csv_spec
from kexp.status.sweep import ray_job_ended, ray_job_succeeded
from kexp.storage.runfiles import (
    credentials_from_secret,
    read_progress,
    read_results,
    read_sweep,
)
from kexp.storage.s3 import shared_s3_client

log = logging.getLogger("kexp.operator")
MANAGED = {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}
#: The children kopf watches for kexp, as (group, version, plural); only those it labelled
#: MANAGED. Jobs and pods are watched by kexp's own informers (kexp.handlers.children).
RAYJOBS: Final = (aio.RAY_GROUP, aio.RAY_VERSION, aio.RAYJOBS)
CHILD_RESOURCES: Final = (RAYJOBS,)


def child_watch_selectors() -> dict[tuple[str, str, str], str]:
    """The label selector the API server applies to each of kopf's watches of kexp's children
    (the same one kexp's informers send for Jobs and pods).

    The handlers' ``labels=MANAGED`` filters run in the operator, after kopf has received and
    decoded every event of the resource: an operator watching all namespaces of a shared
    cluster would otherwise take in every event of every other workload.
    """
    return dict.fromkeys(CHILD_RESOURCES, MANAGED_SELECTOR)


MAX_CONFLICT_RETRIES = 5
#: Kubernetes Events kopf posts at once (see configure).
POSTING_WORKERS = 8
#: Delays before re-running a pass that failed for a reason other than a write conflict.
RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
#: How often the heartbeats of Running experiments are read (S3 cannot be watched).
PROGRESS_INTERVAL_S = float(os.environ.get("KEXP_PROGRESS_INTERVAL_S", "10"))
#: How long S3 credentials read from a Secret are reused.
SECRET_TTL_S = 30.0
#: How long "this Secret does not exist" is believed: a run waits on it (the operator may not
#: watch Secrets), so the user's fix should be seen soon.
SECRET_MISSING_TTL_S = 3.0
#: A heartbeat older than this marks a run Stalled.
STALL_AFTER_S = float(os.environ.get("KEXP_STALL_SECONDS", "600"))
#: How long the answer to "does the cluster serve KubeRay's RayJob?" is reused.
KUBERAY_TTL_S = 30.0
#: With more passes than this in flight the operator is behind, and the status of a run whose
#: workload exists waits in memory until it has caught up (see Deferrals). 0 turns it off.
DEFER_WHEN_IN_FLIGHT = int(os.environ.get("KEXP_DEFER_STATUS_ABOVE", "32"))
#: The longest a status waits in memory, however far behind the operator stays.
MAX_DEFER_S = float(os.environ.get("KEXP_MAX_STATUS_DEFER_S", "15"))
#: Held statuses written at once when the operator has caught up.
FLUSH_WORKERS = 8
API_FUNCTIONS = ApiFunctions(
    validate=validate_spec, merge_template=models.merge_template, config_hash=models.config_hash
)
Key = tuple[str, str]


@dataclass
class Deferrals:
    """Status writes held back while the operator is behind.

    A burst of applies leaves hundreds of passes in flight, and on a busy API server an
    Experiment's status write costs about as much as creating its Job. While more than
    ``DEFER_WHEN_IN_FLIGHT`` passes are in flight, a pass whose run's workload exists keeps its
    status here instead of writing it (``may_defer_status`` says which may wait), and its
    Events with it (an Event follows the status write that records its step, and a burst's
    Events cost the API server too): the Jobs of the burst are created first, and a run that
    moved from Pending to Running meanwhile gets one write instead of two. Every pass reads its
    Experiment with the held status in place, so conditions, Events and provenance carry on
    from it. Once the passes in flight fall to the threshold, or after ``MAX_DEFER_S`` at the
    latest, each held status gets a pass that writes it, ``FLUSH_WORKERS`` at a time. A restart
    loses nothing that cannot be recomputed: the workload is in the API server, and a pass after
    a restart derives the Events again from the status stored.
    """

    threshold: int = DEFER_WHEN_IN_FLIGHT
    in_flight: int = 0
    statuses: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: The Events of the passes whose statuses are held, posted once that status is written.
    events: dict[Key, list[tuple[str, str, str]]] = field(default_factory=dict)
    #: Held statuses without a pass scheduled to write them yet.
    unflushed: set[Key] = field(default_factory=set)
    #: Passes writing held statuses, until they end.
    flushes: set[asyncio.Future[None]] = field(default_factory=set)
    flush_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(FLUSH_WORKERS))

    def behind(self) -> bool:
        """Whether the operator is behind: more passes in flight than the threshold."""
        return self.threshold > 0 and self.in_flight > self.threshold


class NoDiffBase(kopf.DiffBaseStorage):
    """A diff base that is never kept.

    kopf builds a deep copy of every object on every event to detect changes for on.create /
    on.update handlers. kexp has none (it reconciles level-triggered from events), so the
    copy is never read; building it was about 14% of the operator's CPU under load.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast("kopf.BodyEssence", {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """All operator settings in one place."""
    # kopf turns per-object log lines at or above this level into Kubernetes Events; at INFO
    # every "Handler succeeded" became an Event POST (about 17 per Experiment). kexp posts its
    # own Events for what a user needs to see, so kopf's own only for warnings and errors.
    settings.posting.level = logging.WARNING
    # kopf posts Events from one worker per object, by default with no limit on how many run at
    # once, over a connection pool with no limit either: a burst of 1000 applies had about 200
    # posting at once, each on its own TLS connection (256 KiB of buffer in Python alone).
    # Eight at a time keeps up (the Events of a burst trail it by seconds, the handlers never
    # wait on them): peak RSS 185-187 MB against 212-214 MB, and a little faster
    # (bench/operator_throughput.py, docs/operator.md run G).
    settings.posting.worker_limit = POSTING_WORKERS
    settings.persistence.diffbase_storage = NoDiffBase()
    for resource, selector in child_watch_selectors().items():
        settings.watching.label_selectors[resource] = selector
    decode_watches_with_orjson()
    # kopf keeps each object's worker task (and what it holds) alive this long after its last
    # event, 5 s by default. A burst of 1000 applies left thousands of idle workers (one per
    # Experiment, Job and pod) alive at once: operator peak RSS 231 MB with 5 s, 201 MB with
    # 0.5 s (bench/operator_throughput.py), and less CPU. A worker that ends is started anew
    # by the object's next event. (kopf's `batching` settings are now `queueing`, and its
    # time-based batching is gone: every event is handled, none waits for the next.)
    settings.queueing.idle_timeout = 0.5
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    metrics = OperatorMetrics()
    port = int(os.environ.get("KEXP_OPERATOR_METRICS_PORT", "8080"))
    if port:
        start_http_server(
            port,
            addr=os.environ.get("KEXP_OPERATOR_METRICS_ADDR", "0.0.0.0"),  # noqa: S104
            registry=metrics.registry,
        )
    memo.metrics = metrics

    def api_error(operation: str) -> None:
        metrics.api_errors.labels(operation=operation).inc()

    memo.kube = aio.Kube.connect(settings, on_error=api_error)
    # Watches on connections of their own: each holds one for as long as it runs.
    memo.children = ChildWatches(
        Rest(login(settings), connections=0),
        lambda kind, event, obj: _child_changed(memo, kind, event, obj),
        on_error=api_error,
    )
    memo.child_passes = set()
    memo.child_pending = set()
    memo.render = RenderSettings.from_env()
    memo.post_event = post_event
    memo.locks = {}
    memo.bodies = {}
    memo.pods_seen = {}
    memo.jobs_seen = {}
    memo.written = {}
    memo.failures = {}
    memo.retries = {}
    memo.running = set()
    memo.deferrals = Deferrals()
    memo.shared = {"indexes": None, "secrets": {}, "kuberay": None}
    memo.progress_task = asyncio.get_running_loop().create_task(_poll_progress(memo))
    log.info("kexp operator started; trainer image %s", memo.render.trainer_image)


def post_event(body: dict[str, Any], kind: str, reason: str, message: str) -> None:
    """An Event on the Experiment (kopf posts them in the background, batched)."""
    kopf.event(kopf.Body(cast("kopf.RawBody", body)), type=kind, reason=reason, message=message)


async def _poll_progress(memo: kopf.Memo) -> None:
    """Read the heartbeat of every Running experiment every PROGRESS_INTERVAL_S.

    Not a kopf timer: those put a finalizer on every Experiment, so deleting one would hang
    while the operator is down. Failures are logged and the loop goes on.
    """
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        indexes = memo.shared["indexes"]
        if indexes is None:
            continue
        for key in list(memo.running):
            body = _one(indexes.experiments, key)
            if body is None:
                memo.running.discard(key)
                continue
            try:
                await reconcile(memo, key[0], key[1], body, indexes, read_progress=True)
            except Exception:
                log.exception("reading the progress of %s/%s failed", *key)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("progress_task")
    if task is not None:
        task.cancel()
    children: ChildWatches | None = memo.get("children")
    if children is not None:
        await children.close()
    kube: aio.Kube | None = memo.get("kube")
    if kube is not None:
        await kube.close()


# ---- indexes: what the watches hold, read by every pass without an API call ---------------
# Async so kopf runs them on the event loop: a sync handler costs a thread-pool round trip
# per event, which at thousands of events was a large share of the operator's CPU.
# kopf's handler protocols list every kwarg it may pass with its widest type (namespace may be
# None for cluster-scoped resources) and cannot express the index kwargs it injects by name;
# these handlers name only what they use, so the decorators' arg-type check is silenced.
def _plain(body: kopf.Body | dict[str, Any]) -> dict[str, Any]:
    # Each watch event is a freshly decoded object that nothing mutates afterwards, so a
    # shallow copy is a safe snapshot (a deep copy per event cost more than the pass itself).
    # managedFields is dropped: nothing reads it, and it is the bulk of a kept object.
    plain = dict(body)
    meta = plain.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        plain["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return plain


@kopf.index(aio.GROUP, aio.VERSION, aio.EXPERIMENTS)  # type: ignore[arg-type]
async def experiments_idx(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {(namespace, name): _plain(body)}


# Experiments by the one their spec.initFrom names (the label the operator sets from it): who
# waits on whom, without a LIST per finished Experiment (one LIST scans every Experiment of the
# namespace in the API server's cache, so a thousand finishing runs cost a million scans).
@kopf.index(  # type: ignore[arg-type]
    aio.GROUP, aio.VERSION, aio.EXPERIMENTS, labels={contract.LABEL_INIT_FROM: kopf.PRESENT}
)
async def dependents_idx(
    namespace: str, name: str, labels: kopf.Labels, **_: Any
) -> dict[Key, str]:
    return {(namespace, labels[contract.LABEL_INIT_FROM]): name}


@kopf.index(aio.GROUP, aio.VERSION, aio.TEMPLATES)  # type: ignore[arg-type]
async def templates_idx(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[Key, Any]:
    return {(namespace, name): dict(spec)}


def _one(index: Mapping[Key, Collection[Any]], key: Key) -> dict[str, Any] | None:
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


class Indexes(NamedTuple):
    """What the watches hold, by kind: kopf's indexes (kopf hands each to handlers as a keyword
    argument) and the Jobs and pods of kexp's own informers."""

    experiments: kopf.Index[Key, Any]
    dependents: kopf.Index[Key, str]
    templates: kopf.Index[Key, Any]
    jobs: Mapping[Key, Collection[Any]]
    pods: Mapping[Key, Collection[Any]]
    rayjobs: kopf.Index[Key, Any]

    @classmethod
    def of(cls, kwargs: Mapping[str, Any], children: ChildWatches) -> Indexes:
        """The indexes among a handler's keyword arguments (named after the index functions)
        and ``children``'s."""
        return cls(
            experiments=kwargs["experiments_idx"],
            dependents=kwargs["dependents_idx"],
            templates=kwargs["templates_idx"],
            jobs=children.jobs,
            pods=children.pods,
            rayjobs=kwargs["rayjobs_idx"],
        )


# ---- events ---------------------------------------------------------------------------------
@kopf.on.event(aio.GROUP, aio.VERSION, aio.EXPERIMENTS)  # type: ignore[arg-type]
async def on_experiment(
    type: str | None,
    body: kopf.Body,
    namespace: str,
    name: str,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    indexes = Indexes.of(kwargs, memo.children)
    if type == "DELETED":
        memo.metrics.forget((namespace, name))
        deferrals = memo.deferrals
        for cache in (memo.bodies, memo.locks, memo.written, deferrals.statuses, deferrals.events):
            cache.pop((namespace, name), None)
        return
    key = (namespace, name)
    # Kept for the passes that child events, retries and the progress loop start.
    memo.shared["indexes"] = indexes
    await memo.children.ready(namespace)
    if memo.written.get(key) != body["metadata"].get("resourceVersion"):
        # Not the echo of our own status write (that one reflects everything a pass knew;
        # whatever changed since arrives as a Job or pod event of its own).
        await reconcile(memo, namespace, name, _plain(body), indexes)
    phase = (body.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        # Experiments waiting on this one (spec.initFrom) can go on now.
        for dependent in sorted(indexes.dependents.get(key, ())):
            dep = _one(indexes.experiments, (namespace, dependent))
            if dep is not None:
                await reconcile(memo, namespace, dependent, dep, indexes)


def _job_summary(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a Job a pass reads (conditions, counts, times)."""
    status = body.get("status") or {}
    conditions = tuple(
        (c.get("type"), c.get("status"), c.get("reason")) for c in status.get("conditions") or []
    )
    counts = tuple(status.get(k) for k in ("active", "ready", "succeeded", "failed"))
    return (conditions, counts, status.get("startTime"), status.get("completionTime"))


def _pod_summary(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a pod a pass reads; events that change nothing else are skipped."""
    status = body.get("status") or {}
    containers = tuple(
        (cs.get("name"), tuple(sorted((cs.get("state") or {}).items(), key=lambda kv: kv[0])))
        for cs in status.get("containerStatuses") or []
    )
    scheduled = tuple(
        (c.get("status"), c.get("reason"))
        for c in status.get("conditions") or []
        if c.get("type") == "PodScheduled"
    )
    return (status.get("phase"), repr(containers), scheduled)


def _child_changed(memo: kopf.Memo, kind: str, event: str, obj: dict[str, Any]) -> None:
    """A Job or pod moved (kexp's informers call this): index it, and start a pass of its
    Experiment unless nothing a pass reads changed. A Job that disappears is reconciled too:
    a pass decides whether it was deleted mid-run; a pod that does is not."""
    children: ChildWatches = memo.children
    key = children.index(kind).apply(event, obj)
    if key is None:
        return
    summarize = _job_summary if kind == "Job" else _pod_summary
    seen: dict[str, tuple[Any, ...]] = memo.jobs_seen if kind == "Job" else memo.pods_seen
    if not _summary_changed(seen, event, obj, summarize, on_delete=kind == "Job"):
        return
    indexes = memo.shared["indexes"]
    if indexes is None:
        return  # no Experiment handled yet: its first pass reads the index anyway
    pending: set[Key] = memo.child_pending
    if key in pending:
        return  # a pass that has not started yet will read this change too
    pending.add(key)
    task = asyncio.ensure_future(_child_pass(memo, key, indexes))
    # The loop keeps only weak references to tasks.
    memo.child_passes.add(task)
    task.add_done_callback(memo.child_passes.discard)


async def _child_pass(memo: kopf.Memo, key: Key, indexes: Indexes) -> None:
    """The pass for a child's change; later changes start another once this one has begun
    (a watch stream delivers many events at once, often several of one run's pod and Job)."""
    memo.child_pending.discard(key)
    await _reconcile_owner(memo, key, indexes)


# KubeRay's RayJobs (sweeps with spec.sweep.rayCluster), watched by kopf: few events, and kopf
# starts watching when KubeRay's CRDs appear (it logs once that it cannot serve them before).
@kopf.index(*RAYJOBS, labels=MANAGED)  # type: ignore[arg-type]
async def rayjobs_idx(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, Any]:
    return {(namespace, labels.get(contract.LABEL_EXPERIMENT, "")): status_only(body)}


def _ray_job_summary(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a RayJob a pass reads."""
    status = body.get("status") or {}
    keys = ("jobDeploymentStatus", "jobStatus", "reason", "message", "startTime", "endTime")
    return tuple(status.get(k) for k in keys)


@kopf.on.event(*RAYJOBS, labels=MANAGED)  # type: ignore[arg-type]
async def on_rayjob(
    type: str | None,
    body: kopf.Body,
    namespace: str,
    labels: kopf.Labels,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    if not _summary_changed(memo.jobs_seen, type or "", body, _ray_job_summary, on_delete=True):
        return
    name = labels.get(contract.LABEL_EXPERIMENT)
    if name:
        await _reconcile_owner(memo, (namespace, name), Indexes.of(kwargs, memo.children))


@kopf.on.event(aio.GROUP, aio.VERSION, aio.TEMPLATES)  # type: ignore[arg-type]
async def on_template(
    namespace: str,
    name: str,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    indexes = Indexes.of(kwargs, memo.children)
    for exp in await memo.kube.list_experiments(namespace, f"{contract.LABEL_TEMPLATE}={name}"):
        await reconcile(memo, namespace, exp["metadata"]["name"], exp, indexes)


def _summary_changed(
    seen: dict[str, tuple[Any, ...]],
    event: str,
    body: Mapping[str, Any],
    summarize: Callable[[Mapping[str, Any]], tuple[Any, ...]],
    *,
    on_delete: bool,
) -> bool:
    """Whether a child's event changes what a pass reads of it.

    ``summarize`` picks out what a pass reads; ``seen`` remembers each child's last summary
    (by uid), so events that only touch metadata, IPs or bookkeeping counters cost no pass. A
    deletion counts only with ``on_delete``.
    """
    uid = str(body["metadata"].get("uid"))
    if event == "DELETED":
        seen.pop(uid, None)
        return on_delete
    summary = summarize(body)
    if seen.get(uid) == summary:
        return False
    seen[uid] = summary
    return True


async def _reconcile_owner(memo: kopf.Memo, key: Key, indexes: Indexes) -> None:
    namespace, name = key
    body = _one(indexes.experiments, key)
    if body is None:
        return  # the Experiment is gone; garbage collection takes its children
    if (_newest(memo, (namespace, name), body).get("status") or {}).get("phase") in TERMINAL:
        return  # a finished Experiment is a record; its Job and pods no longer change it
    await reconcile(memo, namespace, name, body, indexes)


# ---- the pass -------------------------------------------------------------------------------
def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _job_succeeded(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions)


def _job_ended(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions
    )


async def _secret_data(memo: kopf.Memo, namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's data, cached for SECRET_TTL_S: heartbeats of many runs share one read."""
    cache: dict[tuple[str, str], tuple[float, dict[str, str] | None]] = memo.shared["secrets"]
    now = time.monotonic()
    hit = cache.get((namespace, name))
    if hit is not None and hit[0] > now:
        return hit[1]
    kube: aio.Kube = memo.kube
    data = await kube.get_secret_data(namespace, name)
    cache[(namespace, name)] = (now + (SECRET_TTL_S if data else SECRET_MISSING_TTL_S), data)
    return data


def _storage_of(body: dict[str, Any], template_spec: dict[str, Any]) -> ResolvedExperiment:
    """Where the run writes (bucket, prefix, Secret), from its spec over its template's."""
    meta = body["metadata"]
    spec = body.get("spec") or {}
    storage = {**(template_spec.get("storage") or {}), **(spec.get("storage") or {})}
    return ResolvedExperiment(meta["name"], meta["namespace"], meta["uid"], {"storage": storage})


def _secret_missing(where: ResolvedExperiment) -> str:
    return (
        f"Secret {where.secret_name!r} (spec.storage.secretRef) not found in namespace "
        f"{where.namespace!r}: create it with the S3 credentials (docs/install.md)"
    )


async def _credentials(memo: kopf.Memo, where: ResolvedExperiment) -> dict[str, str] | StorageError:
    """The run's S3 Secret's data, or why the operator cannot read it."""
    try:
        data = await _secret_data(memo, where.namespace, where.secret_name)
    except ApiError as exc:
        if exc.status != 403:
            raise
        return StorageError(
            "S3SecretForbidden",
            f"the operator may not read Secret {where.secret_name!r} "
            f"(spec.storage.secretRef) in namespace {where.namespace!r}: allow it (the Helm "
            "chart's rbac.secretNames, when set, lists the only Secrets it may read)",
        )
    return data if data is not None else StorageError("S3SecretMissing", _secret_missing(where))


async def _run_location(
    memo: kopf.Memo, body: dict[str, Any], template_spec: dict[str, Any]
) -> tuple[Any, ResolvedExperiment] | str:
    """An S3 client and where the run writes, or why its storage cannot be reached."""
    where = _storage_of(body, template_spec)
    data = await _credentials(memo, where)
    if isinstance(data, StorageError):
        return data.message
    return shared_s3_client(credentials_from_secret(data)), where


async def _storage_error(
    memo: kopf.Memo, body: dict[str, Any], template_spec: dict[str, Any]
) -> StorageError | None:
    """Why the run's S3 Secret cannot be read, if it cannot."""
    data = await _credentials(memo, _storage_of(body, template_spec))
    return data if isinstance(data, StorageError) else None


async def _fetch_results(
    memo: kopf.Memo, body: dict[str, Any], template_spec: dict[str, Any], job_succeeded: bool
) -> tuple[ResultsReport | None, str | None]:
    """The trainer's results (None and why when absent or malformed)."""
    located = await _run_location(memo, body, template_spec)
    if isinstance(located, str):
        return None, located
    client, where = located
    merged = models.merge_template(template_spec, body.get("spec") or {})
    return await asyncio.to_thread(
        read_results,
        client,
        where.bucket,
        where.s3_prefix,
        results_csv_spec(merged),
        job_succeeded=job_succeeded,
    )


async def _fetch_progress(
    memo: kopf.Memo, body: dict[str, Any], template_spec: dict[str, Any]
) -> ProgressReport | None:
    """The trainer's latest heartbeat, if it has written one (a bad one is ignored)."""
    located = await _run_location(memo, body, template_spec)
    if isinstance(located, str):
        return None
    client, where = located
    return await asyncio.to_thread(read_progress, client, where.bucket, where.s3_prefix)


async def _fetch_sweep(
    memo: kopf.Memo, body: dict[str, Any], template_spec: dict[str, Any]
) -> SweepReport | None:
    """The sweep's latest sweep.json, if it has written one (a bad one is ignored)."""
    located = await _run_location(memo, body, template_spec)
    if isinstance(located, str):
        return None
    client, where = located
    return await asyncio.to_thread(read_sweep, client, where.bucket, where.s3_prefix)


async def _serves_kuberay(memo: kopf.Memo) -> bool:
    """Whether the cluster serves KubeRay's RayJob, asked at most every KUBERAY_TTL_S."""
    cached: tuple[float, bool] | None = memo.shared.get("kuberay")
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]
    kube: aio.Kube = memo.kube
    answer = await kube.serves(aio.RAY_GROUP, aio.RAY_VERSION, aio.RAYJOBS)
    memo.shared["kuberay"] = (now + KUBERAY_TTL_S, answer)
    return answer


def _job_was_created(body: dict[str, Any]) -> bool:
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "JobCreated" and c.get("status") == "True" for c in conditions)


async def _observe(
    memo: kopf.Memo,
    namespace: str,
    body: dict[str, Any],
    indexes: Indexes,
    read_progress: bool = False,
) -> Observed:
    name = body["metadata"]["name"]
    spec = body.get("spec") or {}
    template = None
    if spec.get("templateRef"):
        template = _one(indexes.templates, (namespace, spec["templateRef"]))
    merged = models.merge_template(template or {}, spec) if template else spec
    is_sweep = bool(merged.get("sweep"))
    on_ray = is_sweep and uses_ray_cluster(merged)
    store = indexes.pods.get((namespace, name))
    pods = [p for p in store] if store is not None else []
    experiments = (
        {
            key[1]: next(iter(value))
            for key, value in indexes.experiments.items()
            if key[0] == namespace and value
        }
        if spec.get("initFrom")
        else {}
    )
    resolved, error = None, None
    source = spec.get("source") or {}
    known = ((body.get("status") or {}).get("provenance") or {}).get("gitCommit")
    revision = source.get("revision")
    if source.get("repository") and revision and not source.get("commit") and not known:
        try:
            resolved = await resolve_revision(source["repository"], revision)
        except SourceError as exc:
            error = str(exc)
    elif revision and not source.get("commit") and not known and is_commit(revision):
        resolved = revision
    job, ray_job, kuberay = None, None, None
    if on_ray:
        ray_job = _one(indexes.rayjobs, (namespace, name))
        if ray_job is None and _job_was_created(body):
            ray_job = await memo.kube.get_ray_job(namespace, workload_name(name, merged))
        if ray_job is None:
            kuberay = await _serves_kuberay(memo)
        child, ended = ray_job, ray_job is not None and ray_job_ended(ray_job)
        succeeded = ray_job is not None and ray_job_succeeded(ray_job)
    else:
        job = _one(indexes.jobs, (namespace, name))
        if job is None and _job_was_created(body):
            # The Job's watch event can trail our own status write: ask before calling it
            # deleted.
            job = await memo.kube.get_job(namespace, workload_name(name, merged))
        child, ended = job, job is not None and _job_ended(job)
        succeeded = job is not None and _job_succeeded(job)
    results, results_error = None, None
    sweep = None
    finished = (body.get("status") or {}).get("phase") in TERMINAL
    storage_error = None
    if child is None and not finished and not _job_was_created(body):
        storage_error = await _storage_error(memo, body, template or {})
    if child is not None and ended and not finished:
        # Read once, on the pass that finishes the run; a finished record is never re-planned.
        results, results_error = await _fetch_results(memo, body, template or {}, succeeded)
        if is_sweep:
            sweep = await _fetch_sweep(memo, body, template or {})
    progress = None
    if read_progress and child is not None and not ended:
        if is_sweep:
            sweep = await _fetch_sweep(memo, body, template or {})
        else:
            progress = await _fetch_progress(memo, body, template or {})
    return Observed(
        sweep=sweep,
        ray_job=ray_job,
        kuberay=kuberay,
        storage_error=storage_error,
        progress=progress,
        stall_after_s=STALL_AFTER_S,
        results=results,
        results_error=results_error,
        template_spec=template,
        job=job,
        pods=pods,
        experiments=experiments,
        resolved_commit=resolved,
        source_error=error,
    )


def _rv(body: dict[str, Any]) -> int:
    value = str(body.get("metadata", {}).get("resourceVersion", "0"))
    return int(value) if value.isdigit() else 0


def _remember(memo: kopf.Memo, key: Key, body: dict[str, Any]) -> dict[str, Any]:
    body = _plain(body)
    memo.bodies[key] = body
    return body


def _newest(memo: kopf.Memo, key: Key, body: dict[str, Any]) -> dict[str, Any]:
    """The newer of ``body`` and the copy our own last write returned.

    A Job or pod event reconciles from the watch's copy of the Experiment, which may not yet
    show our last status write; starting from it would only earn a 409. resourceVersions are
    opaque by contract but etcd revisions in practice; if they are not numbers, the watch's
    copy is used and a conflict, if any, is retried as usual.
    """
    ours = memo.bodies.get(key)
    if ours is not None and _rv(ours) > _rv(body):
        return dict(ours)
    return _remember(memo, key, body)


def _with_held_status(body: dict[str, Any], held: dict[str, Any] | None) -> dict[str, Any]:
    """The Experiment as a pass sees it: its status replaced by one held in memory, if any."""
    return body if held is None else {**body, "status": held}


async def _carry_out(memo: kopf.Memo, body: dict[str, Any], plan: Plan, *, defer: bool) -> None:
    """Labels, children, the status write (held in memory instead when ``defer``), Events
    (held with the status; posted after the write, with any held before).

    ``body`` is the Experiment as stored: the status is written when it differs from that.
    """
    kube: aio.Kube = memo.kube
    deferrals: Deferrals = memo.deferrals
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    key = (ns, name)
    resource_version = meta["resourceVersion"]
    if plan.labels:
        # The label write bumps resourceVersion; the status write must not conflict with it.
        labelled = await kube.patch_experiment_labels(ns, name, plan.labels)
        resource_version = labelled["metadata"]["resourceVersion"]
        _remember(memo, key, labelled)
    # At once: a Job may exist before the ConfigMap it mounts (the kubelet waits for the
    # volume), and one round trip instead of two is most of a pass's latency under load.
    created = await asyncio.gather(*(kube.create_if_absent(child) for child in plan.create))
    fault = os.environ.get("KEXP_FAULT_EXIT_AFTER_CREATING")
    if fault and any(
        new and c["kind"] == fault for new, c in zip(created, plan.create, strict=True)
    ):
        # Fault injection for the crash-recovery test: die between create and status write.
        os._exit(17)
    if plan.status == (body.get("status") or {}):
        deferrals.statuses.pop(key, None)
        events = deferrals.events.pop(key, []) + plan.events
    elif defer:
        if deferrals.statuses.get(key) != plan.status:
            memo.metrics.held_statuses.inc()
        deferrals.statuses[key] = plan.status
        if key not in deferrals.unflushed:
            deferrals.unflushed.add(key)
            asyncio.get_running_loop().call_later(MAX_DEFER_S, _flush, memo, [key])
        deferrals.events.setdefault(key, []).extend(plan.events)
        events = []
    else:
        written = await kube.patch_experiment_status(ns, name, plan.status, resource_version)
        memo.written[key] = written["metadata"]["resourceVersion"]
        deferrals.statuses.pop(key, None)
        _remember(memo, key, written)
        events = deferrals.events.pop(key, []) + plan.events
    for kind, reason, message in events:
        memo.post_event(body, kind, reason, message)


def _flush(memo: kopf.Memo, keys: list[Key]) -> None:
    """Schedule the write of each status still held (see _write_held)."""
    deferrals: Deferrals = memo.deferrals
    for key in keys:
        deferrals.unflushed.discard(key)
        task = asyncio.ensure_future(_write_held(memo, key))
        # The loop keeps only weak references to tasks.
        deferrals.flushes.add(task)
        task.add_done_callback(deferrals.flushes.discard)


async def _write_held(memo: kopf.Memo, key: Key) -> None:
    """A pass that writes the status held for ``key``, however far behind the operator is (a
    flush that held its statuses again would only go round). FLUSH_WORKERS at a time: a
    thousand held statuses written at once would queue new runs' Jobs behind them."""
    deferrals: Deferrals = memo.deferrals
    async with deferrals.flush_slots:
        indexes = memo.shared["indexes"]
        body = _one(indexes.experiments, key) if indexes is not None else None
        if key in deferrals.statuses and body is not None:
            await reconcile(memo, key[0], key[1], body, indexes, write_held=True)


async def reconcile(
    memo: kopf.Memo,
    namespace: str,
    name: str,
    body: dict[str, Any],
    indexes: Indexes,
    *,
    read_progress: bool = False,
    write_held: bool = False,
) -> None:
    """One serialized pass for one Experiment, retried on write conflicts.

    ``write_held``: write the status even while the operator is behind (see Deferrals).
    """
    deferrals: Deferrals = memo.deferrals
    deferrals.in_flight += 1
    try:
        await _serialized_pass(memo, namespace, name, body, indexes, read_progress, write_held)
    finally:
        deferrals.in_flight -= 1
        if deferrals.unflushed and not deferrals.behind():
            _flush(memo, sorted(deferrals.unflushed))


async def _serialized_pass(
    memo: kopf.Memo,
    namespace: str,
    name: str,
    body: dict[str, Any],
    indexes: Indexes,
    read_progress: bool,
    write_held: bool,
) -> None:
    key = (namespace, name)
    lock: asyncio.Lock = memo.locks.setdefault(key, asyncio.Lock())
    metrics: OperatorMetrics = memo.metrics
    deferrals: Deferrals = memo.deferrals
    async with lock:
        started = time.perf_counter()
        body = _newest(memo, key, body)
        try:
            for _attempt in range(MAX_CONFLICT_RETRIES):
                seen = _with_held_status(body, deferrals.statuses.get(key))
                observed = await _observe(memo, namespace, seen, indexes, read_progress)
                plan = plan_pass(
                    seen, observed, api=API_FUNCTIONS, settings=memo.render, now=_now()
                )
                defer = (
                    not write_held
                    and deferrals.behind()
                    and may_defer_status(plan.status, observed)
                )
                try:
                    await _carry_out(memo, body, plan, defer=defer)
                except aio.Conflict:
                    metrics.reconciles.labels(result="conflict").inc()
                    fresh = await memo.kube.get_experiment(namespace, name)
                    if fresh is None:
                        return
                    body = _remember(memo, key, fresh)
                    continue
                metrics.reconciles.labels(result="ok").inc()
                metrics.observe(key, seen.get("status") or {}, plan.status)
                # kopf hands each object a shallow copy of the memo: only shared containers
                # reach the progress loop, so the indexes go into one.
                memo.shared["indexes"] = indexes
                if plan.status.get("phase") == "Running" or plan.status.get("reason") in (
                    "KubeRayMissing",
                    *STORAGE_REASONS,
                ):
                    # Polled: heartbeats are read, and KubeRay or the Secret may come
                    # meanwhile (Secrets are not watched: the operator may only get them).
                    memo.running.add(key)
                else:
                    memo.running.discard(key)
                if plan.status.get("phase") in TERMINAL:
                    memo.bodies.pop(key, None)  # a finished record needs no newer copy
                memo.failures.pop(key, None)
                return
            raise RuntimeError(f"status kept changing over {MAX_CONFLICT_RETRIES} attempts")
        except Exception as exc:
            metrics.reconciles.labels(result="error").inc()
            attempt = memo.failures.get(key, 0)
            memo.failures[key] = attempt + 1
            delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
            log.warning(
                "reconcile of %s/%s failed (%s); again in %.0fs", namespace, name, exc, delay
            )
            # Event handlers are not retried by kopf; schedule the next pass ourselves.
            memo.retries[key] = asyncio.get_running_loop().call_later(
                delay, lambda: asyncio.ensure_future(_retry(memo, key, indexes))
            )
        finally:
            metrics.reconcile_seconds.observe(time.perf_counter() - started)


async def _retry(memo: kopf.Memo, key: Key, indexes: Indexes) -> None:
    memo.retries.pop(key, None)
    body = _one(indexes.experiments, key)
    if body is not None:
        await reconcile(memo, key[0], key[1], body, indexes)
