"""The trainer's Prometheus metrics, with the contract's names and bounded labels."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kexp.api import contract

#: Losses exported as ``kexp_trainer_loss{loss=...}`` when an algorithm reports them (the one
#: list a single run and a sweep's trials share).
LOSSES = (
    "policy_loss",
    "value_loss",
    "entropy",
    "q_loss",
    "actor_loss",
    "bc_loss",
    "val_loss",
    "disc_loss",
)


class TrainerMetrics:
    """``kexp_trainer_*`` metrics of one run (labels: experiment, namespace, trial)."""

    def __init__(self, experiment: str, namespace: str, trial: str = "") -> None:
        self.registry = CollectorRegistry()
        labels = dict(zip(contract.METRIC_LABELS, (experiment, namespace, trial), strict=True))
        names = list(labels)
        self.steps = Counter(
            contract.METRIC_STEPS.removesuffix("_total"),
            "Environment steps trained.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.steps_per_second = Gauge(
            contract.METRIC_STEPS_PER_SECOND,
            "Recent training speed.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.episode_reward = Gauge(
            contract.METRIC_EPISODE_REWARD,
            "Mean reward of recent episodes.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self._loss = Gauge(
            contract.METRIC_LOSS,
            "Latest value of each training loss.",
            [*names, "loss"],
            registry=self.registry,
        )
        self._eval = Gauge(
            contract.METRIC_EVAL_SCORE,
            "Latest evaluation score, by metric.",
            [*names, "metric"],
            registry=self.registry,
        )
        self.checkpoint_upload_seconds = Histogram(
            contract.METRIC_CHECKPOINT_UPLOAD_SECONDS,
            "Time to upload one checkpoint.",
            names,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        ).labels(**labels)
        self.gpu_memory_bytes = Gauge(
            contract.METRIC_GPU_MEMORY_BYTES,
            "GPU memory allocated by the trainer.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self._labels = labels

    def loss(self, name: str, value: float) -> None:
        """Set one loss (policy, value, entropy, ...: a fixed set per algorithm)."""
        self._loss.labels(**self._labels, loss=name).set(value)

    def eval_score(self, metric: str, value: float) -> None:
        """Set one evaluation score (pdm_score, collision_rate, ...)."""
        self._eval.labels(**self._labels, metric=metric).set(value)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped in-pod
        """Expose /metrics on ``port``."""
        start_http_server(port, addr=addr, registry=self.registry)
