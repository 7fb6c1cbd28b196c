"""Progress heartbeat, metrics history and final results, written to the run's S3 prefix.

``progress.json`` is rewritten at most every ``heartbeat_s`` (the operator shows it in status
and marks a run Stalled when it stops), ``metrics.csv`` keeps every logged row (columns in a
stable order: step, time, then metrics by first appearance), and ``results.json`` is written
once, by ``finish`` or by ``fail``, so the operator can always harvest why a run ended.
Writes go through one background thread so the training loop never waits on S3.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from minio import Minio

from kexp.api import contract
from kexp.api.reports import (
    CheckpointsReport,
    EnvironmentReport,
    ProgressReport,
    ResultsReport,
)

log = logging.getLogger("kexp_trainers.reporting")


def utc_now() -> str:
    """RFC 3339 UTC timestamp, second resolution (as Kubernetes writes them)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunReporter:
    """The reports of one run under ``s3://bucket/prefix``."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str,
        total_steps: int,
        *,
        heartbeat_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.total_steps = total_steps
        self.heartbeat_s = heartbeat_s
        self._clock = clock
        self._rows: list[dict[str, float]] = []
        self._columns: list[str] = ["step", "time"]
        self._started = clock()
        self._last_beat: float | None = None
        self._last_step = 0
        self._rate_anchor = (clock(), 0)
        self._pending: list[Future[None]] = []
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kexp-report")

    # ---- during training ----------------------------------------------------------------
    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record a row of metrics at ``step``; maybe send a heartbeat (never blocks on S3)."""
        now = self._clock()
        row = {"step": float(step), "time": round(now - self._started, 3), **metrics}
        for key in metrics:
            if key not in self._columns:
                self._columns.append(key)
        self._rows.append(row)
        self._last_step = step
        if self._last_beat is None or now - self._last_beat >= self.heartbeat_s:
            self._last_beat = now
            report = self.progress(step, metrics.get("episode_reward"))
            self._submit(contract.PROGRESS_FILE, report.to_json(), "application/json")

    def progress(self, step: int, episode_reward: float | None = None) -> ProgressReport:
        """The heartbeat for ``step`` (speed over the time since the previous heartbeat)."""
        now = self._clock()
        anchor_time, anchor_step = self._rate_anchor
        elapsed = now - anchor_time
        rate = (step - anchor_step) / elapsed if elapsed > 0 else 0.0
        self._rate_anchor = (now, step)
        return ProgressReport(
            step=step,
            total_steps=self.total_steps,
            steps_per_second=max(rate, 0.0),
            updated_at=utc_now(),
            episode_reward=episode_reward,
        )

    def metrics_csv(self) -> str:
        """The history so far as CSV."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self._columns, restval="", lineterminator="\n")
        writer.writeheader()
        for row in self._rows:
            writer.writerow({k: (int(v) if k == "step" else v) for k, v in row.items()})
        return out.getvalue()

    # ---- the end ------------------------------------------------------------------------
    def finish(
        self,
        scores: Mapping[str, float],
        *,
        checkpoints: CheckpointsReport,
        environment: EnvironmentReport,
    ) -> ResultsReport:
        """Write metrics.csv, a last heartbeat and results.json for a run that succeeded."""
        report = ResultsReport(
            outcome="succeeded",
            scores=dict(scores),
            step=self._last_step,
            checkpoints=checkpoints,
            environment=environment,
            finished_at=utc_now(),
        )
        self._close_with(report)
        return report

    def fail(
        self,
        error: str,
        *,
        field: str | None = None,
        environment: EnvironmentReport | None = None,
        checkpoints: CheckpointsReport | None = None,
    ) -> ResultsReport:
        """Write results.json for a run that failed, naming the spec field when known."""
        report = ResultsReport(
            outcome="failed",
            step=self._last_step,
            error=error,
            error_field=field,
            environment=environment,
            checkpoints=checkpoints or CheckpointsReport(),
            finished_at=utc_now(),
        )
        self._close_with(report)
        return report

    def _close_with(self, report: ResultsReport) -> None:
        self._submit(contract.METRICS_FILE, self.metrics_csv(), "text/csv")
        if self._rows:
            beat = self.progress(self._last_step)
            self._submit(contract.PROGRESS_FILE, beat.to_json(), "application/json")
        self._submit(contract.RESULTS_FILE, report.to_json(), "application/json")
        self.wait()
        self._io.shutdown(wait=True)

    def wait(self) -> None:
        """Wait for every queued write; raise the first that failed."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def _submit(self, name: str, text: str, content_type: str) -> None:
        data = text.encode()
        key = self.prefix + name
        self._pending = [f for f in self._pending if not f.done() or f.exception()]
        self._pending.append(self._io.submit(self._put, key, data, content_type))

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )
