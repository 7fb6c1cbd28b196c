"""The operator's metrics: phases, stalled runs, finished runs counted once, durations."""

from __future__ import annotations

from kexp.handlers.metrics import OperatorMetrics


def value(m: OperatorMetrics, name: str, **labels: str) -> float:
    got = m.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def status(phase: str, reason: str = "", stalled: bool = False, **prov: str) -> dict[str, object]:
    conditions = [{"type": "Stalled", "status": "True" if stalled else "False"}]
    return {"phase": phase, "reason": reason, "conditions": conditions, "provenance": prov}


def test_phases_stalled_and_finished_runs() -> None:
    m = OperatorMetrics()
    a, b = ("ns", "a"), ("ns", "b")
    m.observe(a, {}, status("Pending"))
    m.observe(b, {}, status("Running", stalled=True))
    assert value(m, "kexp_operator_experiments", phase="Pending") == 1
    assert value(m, "kexp_operator_experiments_stalled") == 1
    m.observe(a, status("Pending"), status("Running"))
    m.observe(b, status("Running", stalled=True), status("Running"))
    assert value(m, "kexp_operator_experiments", phase="Running") == 2
    assert value(m, "kexp_operator_experiments_stalled") == 0
    done = status(
        "Failed", "OOMKilled", startedAt="2026-11-23T10:00:00Z", completedAt="2026-11-23T10:05:00Z"
    )
    m.observe(a, status("Running"), done)
    # The same finished status seen again (a later pass, an operator restart) counts nothing.
    m.observe(a, done, done)
    assert (
        value(m, "kexp_operator_experiments_finished_total", phase="Failed", reason="OOMKilled")
        == 1
    )
    assert value(m, "kexp_operator_experiment_duration_seconds_sum", phase="Failed") == 300
    assert value(m, "kexp_operator_experiment_duration_seconds_count", phase="Failed") == 1
    m.forget(a)
    m.forget(b)
    assert value(m, "kexp_operator_experiments", phase="Failed") == 0
    assert value(m, "kexp_operator_experiments", phase="Running") == 0
