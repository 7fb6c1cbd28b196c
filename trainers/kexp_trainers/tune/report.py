"""The sweep's report (``sweep.json``), built from Tune's trials, and the callback that writes it.

``sweep_report`` is pure: it turns what Tune knows about each trial (status, config, last
result, error) into a ``SweepReport``. The callback rebuilds the report from Tune's own list of
trials on every step (written at most every few seconds) rather than keeping a tally, so a
sweep restored from its Tune state reports the trials that finished before the restart too.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ray import tune

from kexp.api import contract
from kexp.api.reports import CheckpointsReport, ResultsReport, SweepReport, TrialReport
from kexp.status.sweep import best_trial, failure_message
from kexp_trainers.runtime.reporting import utc_now
from kexp_trainers.tune.metrics import SweepMetrics
from kexp_trainers.tune.space import CHECKPOINT, EVAL, FINAL, OBJECTIVE
from kexp_trainers.tune.trial import plain

log = logging.getLogger("kexp_trainers.tune")

#: Tune's trial statuses, as kexp names them (TERMINATED is resolved by the FINAL marker).
_STATES: Final = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "running"}
_QUALIFIED: Final = re.compile(r"^(?:[A-Za-z_][\w]*\.)+(?=[A-Za-z_]\w*(?:\(|:))")
#: The final reports of sweeps that ended in this process, by S3 prefix (see the callback).
FINISHED: dict[str, SweepReport] = {}


@dataclass(frozen=True)
class TrialView:
    """What the report needs of one Tune trial."""

    trial_id: str
    status: str
    config: Mapping[str, Any] = field(default_factory=dict)
    last_result: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


def short_error(text: str | None) -> str | None:
    """The last line of a traceback, without module paths (``RuntimeError: boom``)."""
    if not text:
        return None
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return None
    return _QUALIFIED.sub("", lines[-1])[:1024]


def trial_state(view: TrialView) -> str:
    """pending, running, completed, stoppedEarly or failed."""
    if view.status == "ERROR":
        return "failed"
    if view.status == "TERMINATED":
        # A trial that ended without its final evaluation was stopped by the scheduler.
        return "completed" if view.last_result.get(FINAL) else "stoppedEarly"
    return _STATES.get(view.status, "pending")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def trial_report(view: TrialView) -> TrialReport:
    """One trial of the report."""
    result = view.last_result
    state = trial_state(view)
    step = _number(result.get("step"))
    scores = result.get(EVAL) if state == "completed" else None
    return TrialReport(
        name=view.trial_id,
        state=state,  # type: ignore[arg-type]
        hyperparameters={k: plain(v) for k, v in view.config.items()},
        score=_number(result.get(OBJECTIVE)),
        scores={k: float(v) for k, v in (scores or {}).items() if _number(v) is not None},
        step=int(step) if step is not None else None,
        iterations=int(result.get("training_iteration") or 0),
        checkpoint=result.get(CHECKPOINT) if state == "completed" else None,
        error=short_error(view.error) if state == "failed" else None,
    )


def sweep_report(
    views: Iterable[TrialView],
    *,
    metric: str,
    mode: str,
    planned: int | None,
    outcome: str = "running",
    error: str | None = None,
    now: str | None = None,
) -> SweepReport:
    """The report of a sweep from its trials, in Tune's order."""
    report = SweepReport(
        outcome="running",
        metric=metric,
        mode="min" if mode == "min" else "max",
        planned=planned,
        trials=[trial_report(v) for v in views],
        error=error,
        updated_at=now or utc_now(),
    )
    if outcome == "running":
        return report
    # ``error`` stays the sweep's own; failure_message derives the all-trials-failed one.
    failure = failure_message(report.model_copy(update={"outcome": outcome}))
    return report.model_copy(
        update={"outcome": "failed" if failure or outcome == "failed" else "succeeded"}
    )


def sweep_results(report: SweepReport, environment: Any) -> ResultsReport:
    """results.json of a finished sweep: the best trial's scores and checkpoint."""
    best = best_trial(report)
    failure = failure_message(report)
    scores: dict[str, float] = {}
    if best is not None:
        scores = dict(best.scores) or (
            {report.metric: best.score} if best.score is not None else {}
        )
    return ResultsReport(
        outcome="failed" if failure else "succeeded",
        scores=scores,
        step=(best.step or 0) if best else 0,
        checkpoints=CheckpointsReport(
            best=best.checkpoint if best else None,
            latest=best.checkpoint if best else None,
            best_step=best.step if best and best.checkpoint else None,
        ),
        environment=environment,
        error=failure,
        finished_at=report.updated_at,
    )


def put_json(client: Any, bucket: str, key: str, text: str) -> None:
    """Write one small JSON object."""
    data = text.encode()
    client.put_object(bucket, key, io.BytesIO(data), len(data), content_type="application/json")


@dataclass
class SweepSettings:
    """Where and how the callback reports (plain values: Tune pickles the callback)."""

    name: str
    namespace: str
    bucket: str
    prefix: str
    metric: str
    mode: str
    planned: int | None
    interval_s: float = 5.0
    metrics_port: int = 0


class SweepReportCallback(tune.Callback):  # type: ignore[misc]
    """Writes ``sweep.json`` while the sweep runs and at its end; exports trial metrics.

    Tune pickles its callbacks into the experiment state in S3 (``tuner.pkl``) and a restored
    sweep uses the unpickled copy, so only ``SweepSettings`` is pickled: the S3 client (whose
    credentials must never reach S3) and the metrics are made again on first use.
    """

    def __init__(self, settings: SweepSettings) -> None:
        self.settings = settings
        self._reset()

    def _reset(self) -> None:
        self._client: Any = None
        self._metrics: SweepMetrics | None = None
        self._errors: dict[str, str] = {}
        self._dirty = True
        self._written = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.settings = state["settings"]
        self._reset()

    # ---- lazily made, never pickled ---------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            from kexp.storage.s3 import s3_client
            from kexp_trainers.runtime.s3 import credentials_from_env

            self._client = s3_client(credentials_from_env())
        return self._client

    def metrics(self) -> SweepMetrics:
        if self._metrics is None:
            self._metrics = SweepMetrics.shared(
                self.settings.name, self.settings.namespace, self.settings.metrics_port
            )
        return self._metrics

    # ---- Tune's hooks -----------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._dirty = True

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self.metrics().observe(trial.trial_id, result)
        self._dirty = True

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._dirty = True
        done = trial_report(
            TrialView(trial.trial_id, "TERMINATED", trial.config, trial.last_result)
        )
        log.info(
            "trial %s %s at step %s: %s %s",
            done.name,
            "completed" if done.state == "completed" else "stopped early",
            done.step,
            self.settings.metric,
            done.score,
        )

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._dirty = True
        log.warning(
            "trial %s failed (its error is in sweep.json once Tune has written it)", trial.trial_id
        )

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if self._dirty and now - self._written >= self.settings.interval_s:
            self._written = now
            self._dirty = False
            try:
                self.write(self.report(trials))
            except Exception as exc:  # a missed heartbeat must not stop the sweep
                log.warning("could not write %s: %s", contract.SWEEP_FILE, exc)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        final = self.report(trials, outcome="succeeded")
        FINISHED[self.settings.prefix] = final

    # ---- the report ---------------------------------------------------------------------------
    def _error(self, trial: Any) -> str | None:
        known = self._errors.get(trial.trial_id)
        if known is None and trial.status == "ERROR":
            try:
                text = trial.get_error()  # written by Tune a little after the failure
            except Exception:
                text = None
            if text:
                known = self._errors[trial.trial_id] = str(text)
        return known

    def report(self, trials: Iterable[Any], outcome: str = "running") -> SweepReport:
        views = [
            TrialView(
                trial_id=t.trial_id,
                status=str(t.status),
                config=dict(t.config or {}),
                last_result=dict(t.last_result or {}),
                error=self._error(t),
            )
            for t in trials
        ]
        s = self.settings
        return sweep_report(views, metric=s.metric, mode=s.mode, planned=s.planned, outcome=outcome)

    def write(self, report: SweepReport) -> None:
        """Put ``sweep.json`` under the sweep's prefix."""
        key = self.settings.prefix + contract.SWEEP_FILE
        put_json(self.client(), self.settings.bucket, key, report.to_json())
