"""The trainer's Prometheus metrics, with the contract's names and bounded labels."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric

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


#: The longest a finished trainer waits for its last scrape (see ``ScrapeWatch``).
FINAL_SCRAPE_MAX_S = 120.0
#: The wait when only one scrape was seen, so the interval is unknown (Prometheus's default).
UNKNOWN_INTERVAL_S = 60.0


class ScrapeWatch:
    """Counts the scrapes of a registry, so a finishing process can wait for one more.

    A pull scrape reads what is set at that moment: values set just before the process exits
    (the final evaluation scores) would reach Prometheus only by chance. Registered first in
    its registry, it is collected before every other collector, so a scrape counted after
    ``wait_for_next`` starts has also read the values set before it started.
    """

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cond = threading.Condition()
        self._count = 0
        self._times: list[float] = []
        registry.register(self)  # type: ignore[arg-type]

    def collect(self) -> Iterator[Metric]:
        """Record a scrape; export nothing."""
        with self._cond:
            self._count += 1
            self._times = [*self._times[-1:], self._clock()]
            self._cond.notify_all()
        return iter(())

    def wait_timeout(self, max_s: float = FINAL_SCRAPE_MAX_S) -> float:
        """How long to wait for the next scrape: none if never scraped (nobody is watching),
        else 1.5 intervals as last seen (plus a second for the scrape itself), at most max_s."""
        with self._cond:
            if not self._times:
                return 0.0
            interval = (
                self._times[1] - self._times[0] if len(self._times) == 2 else UNKNOWN_INTERVAL_S
            )
        return min(max_s, 1.5 * interval + 1.0)

    def wait_for_next(self, max_s: float = FINAL_SCRAPE_MAX_S) -> bool:
        """Block until a scrape starts after this call; False if none came in time."""
        timeout = self.wait_timeout(max_s)
        with self._cond:
            seen = self._count
            return self._cond.wait_for(lambda: self._count > seen, timeout=timeout)


class TrainerMetrics:
    """``kexp_trainer_*`` metrics of one run (labels: experiment, namespace, trial)."""

    def __init__(self, experiment: str, namespace: str, trial: str = "") -> None:
        self.registry = CollectorRegistry()
        self.scrapes = ScrapeWatch(self.registry)
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

    def await_final_scrape(self) -> bool:
        """Let Prometheus read the final values before the process exits (see ScrapeWatch)."""
        return self.scrapes.wait_for_next()
