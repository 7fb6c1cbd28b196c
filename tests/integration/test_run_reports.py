"""Progress, history and results files written by the trainer runtime to the real MinIO."""

from __future__ import annotations

import csv
import io
import itertools
import json

import pytest
from minio import Minio

from kexp.api.reports import CheckpointsReport, EnvironmentReport, ProgressReport, ResultsReport
from kexp_trainers.runtime.reporting import RunReporter

pytestmark = pytest.mark.stack
PREFIX = "research/ppo/uid-9/"
ENV = EnvironmentReport(python_version="3.11.7", device="cpu", seed=3, git_commit="a" * 40)


def read(s3: Minio, bucket: str, name: str) -> str:
    resp = s3.get_object(bucket, PREFIX + name)
    try:
        return resp.read().decode()
    finally:
        resp.close()
        resp.release_conn()


class FakeClock:
    """Seconds that advance only when the test says so (a pure stand-in for time)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_heartbeat_history_and_results_of_a_successful_run(s3: Minio, bucket: str) -> None:
    clock = FakeClock()
    reporter = RunReporter(s3, bucket, PREFIX, total_steps=1000, heartbeat_s=5, clock=clock)
    for step in range(0, 600, 100):
        clock.now += 2  # 100 steps every 2 s
        reporter.log(step, {"loss": 1.0 / (step + 1), "episode_reward": step / 10})
    reporter.wait()
    # Steps 0..500 are logged at t=102..112. Heartbeats go at t=102 (the first) and t=108
    # (5 s later, step 300); t=110 and t=112 are too soon after, so step 300 is the last.
    beat = ProgressReport.model_validate_json(read(s3, bucket, "progress.json"))
    assert (beat.step, beat.total_steps) == (300, 1000)
    assert beat.steps_per_second == pytest.approx(300 / 6)  # 300 steps since t=102
    assert beat.episode_reward == 30.0

    reporter.log(600, {"loss": 0.01, "grad_norm": 0.5})  # a metric that appears later
    results = reporter.finish(
        {"reward": 210.0, "pdm_score": 0.83},
        checkpoints=CheckpointsReport(best="s3://b/k/best.pt", best_step=500),
        environment=ENV,
    )
    stored = ResultsReport.model_validate_json(read(s3, bucket, "results.json"))
    assert stored == results
    assert (stored.outcome, stored.step, stored.scores["pdm_score"]) == ("succeeded", 600, 0.83)
    assert json.loads(read(s3, bucket, "results.json"))["environment"]["gitCommit"] == "a" * 40

    rows = list(csv.reader(io.StringIO(read(s3, bucket, "metrics.csv"))))
    assert rows[0] == ["step", "time", "loss", "episode_reward", "grad_norm"]
    assert [r[0] for r in rows[1:]] == [str(s) for s in range(0, 700, 100)]
    assert rows[-1][4] == "0.5"
    assert rows[1][4] == ""  # no grad_norm before it was logged


def test_a_failed_run_still_writes_results_naming_the_field(s3: Minio, bucket: str) -> None:
    reporter = RunReporter(s3, bucket, PREFIX, total_steps=10)
    reporter.fail(
        "environment id 'highway-fats-v0' is not registered",
        field="spec.environment.id",
        environment=ENV,
    )
    stored = json.loads(read(s3, bucket, "results.json"))
    assert stored["outcome"] == "failed"
    assert stored["errorField"] == "spec.environment.id"
    assert "highway-fats-v0" in stored["error"]
    assert read(s3, bucket, "metrics.csv") == "step,time\n"


def test_logging_never_waits_for_s3(s3: Minio, bucket: str) -> None:
    import time

    reporter = RunReporter(s3, bucket, PREFIX, total_steps=10_000, heartbeat_s=0)
    durations = []
    for step in itertools.islice(itertools.count(), 200):
        started = time.perf_counter()
        reporter.log(step, {"loss": 0.1})  # a heartbeat on every call
        durations.append(time.perf_counter() - started)
    reporter.wait()
    assert max(durations) < 0.05
