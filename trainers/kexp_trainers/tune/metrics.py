"""The sweep's Prometheus metrics: every trial's ``kexp_trainer_*`` series on one port.

Trials run in Ray worker processes (on other pods, with a Ray cluster) that cannot each serve
``$KEXP_METRICS_PORT``. The driver sees every result the trials report, so it keeps one
``TrainerMetrics`` per trial (label ``trial``) and serves them all from one endpoint: the
same names and labels as a single run, one scrape target per sweep.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric

from kexp_trainers.runtime.metrics import LOSSES, ScrapeWatch, TrainerMetrics
from kexp_trainers.tune.space import EVAL, FINAL


class _Merged:
    """A collector that merges the families of several registries (one per trial)."""

    def __init__(self) -> None:
        self.registries: list[CollectorRegistry] = []
        self._lock = threading.Lock()

    def add(self, registry: CollectorRegistry) -> None:
        with self._lock:
            self.registries.append(registry)

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        with self._lock:
            registries = list(self.registries)
        for registry in registries:
            for family in registry.collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                merged.samples.extend(family.samples)
        return list(families.values())


class SweepMetrics:
    """Per-trial ``TrainerMetrics`` of one sweep, fed from the trials' Tune results."""

    _shared: ClassVar[dict[tuple[str, str], SweepMetrics]] = {}

    def __init__(self, experiment: str, namespace: str) -> None:
        self.experiment = experiment
        self.namespace = namespace
        self.registry = CollectorRegistry()
        self.scrapes = ScrapeWatch(self.registry)  # first: see ScrapeWatch
        self._merged = _Merged()
        self.registry.register(self._merged)  # type: ignore[arg-type]
        self._trials: dict[str, TrainerMetrics] = {}
        self._steps: dict[str, float] = {}

    @classmethod
    def shared(cls, experiment: str, namespace: str, port: int) -> SweepMetrics:
        """This process's metrics of the sweep, serving on ``port`` (0: not served)."""
        key = (namespace, experiment)
        found = cls._shared.get(key)
        if found is None:
            found = cls._shared[key] = cls(experiment, namespace)
            if port:
                start_http_server(port, registry=found.registry)
        return found

    def trial(self, trial: str) -> TrainerMetrics:
        """The metrics of one trial, made on first use."""
        metrics = self._trials.get(trial)
        if metrics is None:
            metrics = self._trials[trial] = TrainerMetrics(self.experiment, self.namespace, trial)
            self._merged.add(metrics.registry)
        return metrics

    def observe(self, trial: str, result: Mapping[str, Any]) -> None:
        """Mirror one Tune result of ``trial`` into its metrics."""
        m = self.trial(trial)
        step = result.get("step")
        if isinstance(step, int | float):
            # A restarted trial resumes at its checkpoint's step, which may be behind.
            done = self._steps.get(trial, 0.0)
            if step > done:
                m.steps.inc(step - done)
                self._steps[trial] = float(step)
        if isinstance(result.get("sps"), int | float):
            m.steps_per_second.set(result["sps"])
        if isinstance(result.get("episode_reward"), int | float):
            m.episode_reward.set(result["episode_reward"])
        for name in LOSSES:
            if isinstance(result.get(name), int | float):
                m.loss(name, result[name])
        if result.get(FINAL):
            for name, value in (result.get(EVAL) or {}).items():
                if isinstance(value, int | float):
                    m.eval_score(name, value)

    def exposition(self) -> str:
        """The text a scrape returns (for tests)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
