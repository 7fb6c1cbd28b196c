"""The operator's own Prometheus metrics (``kexp_operator_*``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PHASES = ("Pending", "Waiting", "Running", "Evaluating", "Succeeded", "Failed")
TERMINAL = ("Succeeded", "Failed")
COMMON_OUTCOMES = (
    ("Succeeded", "JobComplete"),
    ("Failed", "TrainerFailed"),
    ("Failed", "OOMKilled"),
    ("Failed", "BackoffLimitExceeded"),
    ("Failed", "DeadlineExceeded"),
)
#: Run durations span a smoke test's seconds to a week of training.
DURATION_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200, 604800)


@dataclass
class OperatorMetrics:
    """Metrics of one operator process, in a registry of its own."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.experiments = Gauge(
            "kexp_operator_experiments",
            "Experiments known to the operator, by phase.",
            ["phase"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "kexp_operator_reconcile_duration_seconds",
            "Time one reconcile pass of an Experiment took.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.reconciles = Counter(
            "kexp_operator_reconciles_total",
            "Reconcile passes, by result (ok, conflict, error).",
            ["result"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "kexp_operator_api_errors_total",
            "Kubernetes API calls that failed (other than 404 and 409), by operation.",
            ["operation"],
            registry=self.registry,
        )
        self.held_statuses = Counter(
            "kexp_operator_status_writes_held_total",
            "Status writes held in memory while the operator was behind (written once it caught "
            "up, merged with any later change).",
            registry=self.registry,
        )
        self.stalled = Gauge(
            "kexp_operator_experiments_stalled",
            "Running experiments whose trainer heartbeat stopped (condition Stalled=True).",
            registry=self.registry,
        )
        self.finished = Counter(
            "kexp_operator_experiments_finished_total",
            "Experiments that reached Succeeded or Failed, by phase and reason.",
            ["phase", "reason"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "kexp_operator_experiment_duration_seconds",
            "Time from training start to the end of a finished experiment, by phase.",
            ["phase"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._stalled: set[tuple[str, str]] = set()
        for phase in PHASES:
            self.experiments.labels(phase=phase).set(0)
        for phase in TERMINAL:
            self.duration.labels(phase=phase)
        # A labelled counter's first increment is invisible to rate(); the usual outcomes
        # start at 0 so that failure-rate alerts see the first failures too.
        for phase, reason in COMMON_OUTCOMES:
            self.finished.labels(phase=phase, reason=reason)

    def observe(self, key: tuple[str, str], old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        """Record a pass that moved an experiment's status from ``old`` to ``new``.

        A run counts as finished once, on the pass that ends it: replaying finished
        experiments after an operator restart counts nothing again.
        """
        phase = new.get("phase")
        self.observe_phase(key, phase)
        stalled = any(
            c.get("type") == "Stalled" and c.get("status") == "True"
            for c in new.get("conditions") or []
        )
        self._set_stalled(key, stalled and phase == "Running")
        if phase in TERMINAL and old.get("phase") not in TERMINAL:
            self.finished.labels(phase=phase, reason=new.get("reason") or "Unknown").inc()
            seconds = _duration(new.get("provenance") or {})
            if seconds is not None:
                self.duration.labels(phase=phase).observe(seconds)

    def _set_stalled(self, key: tuple[str, str], stalled: bool) -> None:
        if stalled:
            self._stalled.add(key)
        else:
            self._stalled.discard(key)
        self.stalled.set(len(self._stalled))

    def forget(self, key: tuple[str, str]) -> None:
        """The experiment is gone."""
        self.observe_phase(key, None)
        self._set_stalled(key, False)

    def observe_phase(self, key: tuple[str, str], phase: str | None) -> None:
        """Record an experiment's phase (None: it is gone); O(1) per call."""
        old = self._phases.pop(key, None)
        if old is not None:
            self.experiments.labels(phase=old).dec()
        if phase is not None:
            self._phases[key] = phase
            self.experiments.labels(phase=phase).inc()


def _duration(provenance: Mapping[str, Any]) -> float | None:
    started, completed = provenance.get("startedAt"), provenance.get("completedAt")
    if not started or not completed:
        return None
    try:
        a = dt.datetime.fromisoformat(str(started).replace("Z", "+00:00"))
        b = dt.datetime.fromisoformat(str(completed).replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (b - a).total_seconds())
