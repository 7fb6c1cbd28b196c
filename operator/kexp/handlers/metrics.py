"""The operator's own Prometheus metrics (``kexp_operator_*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PHASES = ("Pending", "Waiting", "Running", "Evaluating", "Succeeded", "Failed")


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
        self._phases: dict[tuple[str, str], str] = {}
        for phase in PHASES:
            self.experiments.labels(phase=phase).set(0)

    def observe_phase(self, key: tuple[str, str], phase: str | None) -> None:
        """Record an experiment's phase (None: it is gone); O(1) per call."""
        old = self._phases.pop(key, None)
        if old is not None:
            self.experiments.labels(phase=old).dec()
        if phase is not None:
            self._phases[key] = phase
            self.experiments.labels(phase=phase).inc()
