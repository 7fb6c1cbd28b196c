"""bench/operator_throughput.py: the arithmetic behind its ceiling and its CPU table."""

from __future__ import annotations

import pytest
from bench.operator_throughput import cpu_delta, cpu_shares, one_core_rate, operator_ceiling


def test_the_ceiling_adds_the_api_server_time_of_each_write_to_the_jobs() -> None:
    # 2 ms a Job, 1 ms an Experiment, 0.5 ms a ConfigMap: 3.5 ms an operator-made Job.
    floor = {"experiment_rate_per_s": 1000.0, "configmap_rate_per_s": 2000.0}
    assert operator_ceiling(500.0, floor, ()) == pytest.approx(500.0)
    assert operator_ceiling(500.0, floor, tuple(floor)) == pytest.approx(1 / 0.0035)


def test_cpu_shares_are_of_every_core_over_the_window() -> None:
    used = cpu_delta({"api": 10.0, "op": 1.0}, {"api": 13.0, "op": 2.0, "new": 0.5})
    assert used == {"api": 3.0, "op": 1.0, "new": 0.5}
    shares = cpu_shares(used, seconds=2.0, cores=2)
    assert shares == {"api": 0.75, "op": 0.25, "new": 0.125}


def test_cpu_deltas_keep_hundredths_of_a_second() -> None:
    # A client's whole burst can be half a CPU-second: tenths would be 10% off.
    assert cpu_delta({"client": 1.0}, {"client": 1.537}) == {"client": 0.54}


def test_one_core_rate_is_what_the_cpu_spent_per_object_allows() -> None:
    assert one_core_rate(0.5, 1000) == pytest.approx(2000.0)  # 0.5 ms a Job
    assert one_core_rate(4.8, 1000) == pytest.approx(1000 / 4.8)
    assert one_core_rate(0.0, 1000) == float("inf")
