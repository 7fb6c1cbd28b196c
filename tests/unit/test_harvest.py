"""Harvest: from what a finished run wrote (results.json, a results CSV) to status fields."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kexp.api.reports import CheckpointsReport, EnvironmentReport, ResultsReport
from kexp.status.harvest import (
    MAX_RESULTS,
    HarvestError,
    failure_message,
    harvest_patch,
    harvested_fields,
    merge_csv_scores,
    objective_metric,
    results_csv_spec,
    scores_from_csv,
)

CSV = "scenario,pdm,collisions\ns1,0.5,2\ns2,0.7,0\ns3,0.9,1\n"
NOW = "2024-05-01T12:00:00Z"


def _csv_spec(aggregate: str | None = None, **columns: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"columns": columns or {"pdm_score": "pdm"}}
    if aggregate is not None:
        spec["aggregate"] = aggregate
    return spec


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies it."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


# ---- spec helpers -----------------------------------------------------------------------------
def test_objective_metric_defaults_to_pdm_score_and_reads_the_spec() -> None:
    assert objective_metric({}) == "pdm_score"
    assert objective_metric({"objective": {"mode": "min"}}) == "pdm_score"
    assert objective_metric({"objective": {"metric": "reward"}}) == "reward"


def test_results_csv_spec_only_for_a_mapping() -> None:
    assert results_csv_spec({}) is None
    assert results_csv_spec({"evaluation": {"episodes": 3}}) is None
    value = {"path": "x.csv", "columns": {"a": "b"}}
    assert results_csv_spec({"evaluation": {"resultsCsv": value}}) == value


# ---- scores_from_csv ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [(None, 0.7), ("mean", 0.7), ("last", 0.9), ("min", 0.5), ("max", 0.9)],
)
def test_scores_from_csv_aggregates_each_column(aggregate: str | None, expected: float) -> None:
    scores = scores_from_csv(CSV, _csv_spec(aggregate), "results.csv")
    assert scores == {"pdm_score": pytest.approx(expected)}


def test_scores_from_csv_maps_several_columns() -> None:
    spec = _csv_spec("mean", pdm_score="pdm", collisions="collisions")
    scores = scores_from_csv(CSV, spec, "results.csv")
    assert scores == {"pdm_score": pytest.approx(0.7), "collisions": pytest.approx(1.0)}


def test_scores_from_csv_skips_blank_cells() -> None:
    text = "scenario,pdm\ns1,0.5\ns2,\ns3,  \ns4,0.9\n"
    # Blanks counted as zero would give 0.35; skipped, the mean is of 0.5 and 0.9.
    assert scores_from_csv(text, _csv_spec(), "r.csv") == {"pdm_score": pytest.approx(0.7)}
    assert scores_from_csv(text, _csv_spec("last"), "r.csv") == {"pdm_score": 0.9}


def test_scores_from_csv_missing_column_names_the_column_and_the_field() -> None:
    with pytest.raises(HarvestError) as info:
        scores_from_csv(CSV, _csv_spec(pdm_score="score"), "s3://b/results.csv")
    message = str(info.value)
    assert "s3://b/results.csv" in message
    assert "'score'" in message
    assert "spec.evaluation.resultsCsv.columns.pdm_score" in message
    assert "['scenario', 'pdm', 'collisions']" in message


def test_scores_from_csv_non_number_names_the_line() -> None:
    text = "scenario,pdm\ns1,0.5\ns2,0.6\ns3,oops\n"
    with pytest.raises(HarvestError) as info:
        scores_from_csv(text, _csv_spec(), "results.csv")
    message = str(info.value)
    assert "results.csv line 4" in message  # the header is line 1
    assert "'oops'" in message
    assert "spec.evaluation.resultsCsv.columns.pdm_score" in message


def test_scores_from_csv_rejects_infinite_values() -> None:
    with pytest.raises(HarvestError, match="line 3"):
        scores_from_csv("scenario,pdm\ns1,0.5\ns2,inf\n", _csv_spec(), "results.csv")


def test_scores_from_csv_column_without_values_is_an_error() -> None:
    text = "scenario,pdm\ns1,\ns2,\n"
    with pytest.raises(HarvestError) as info:
        scores_from_csv(text, _csv_spec(), "results.csv")
    assert "'pdm'" in str(info.value)
    assert "has no values" in str(info.value)
    assert "spec.evaluation.resultsCsv.columns.pdm_score" in str(info.value)


# ---- merge_csv_scores ---------------------------------------------------------------------------
def test_merge_csv_scores_without_results_json_uses_the_job_outcome() -> None:
    ok = merge_csv_scores(None, {"pdm_score": 0.7}, job_succeeded=True)
    assert ok.outcome == "succeeded"
    assert ok.scores == {"pdm_score": 0.7}
    assert ok.error is None
    failed = merge_csv_scores(None, {"pdm_score": 0.7}, job_succeeded=False)
    assert failed.outcome == "failed"
    assert failed.error == "the training Job failed"
    assert failed.scores == {"pdm_score": 0.7}


def test_merge_csv_scores_csv_wins_over_results_json() -> None:
    report = ResultsReport(outcome="succeeded", scores={"pdm_score": 0.1, "reward": 5.0}, step=1000)
    merged = merge_csv_scores(report, {"pdm_score": 0.7, "collisions": 1.0}, job_succeeded=False)
    assert merged.scores == {"pdm_score": 0.7, "reward": 5.0, "collisions": 1.0}
    assert merged.outcome == "succeeded"  # results.json decides, not the Job
    assert merged.step == 1000
    assert report.scores == {"pdm_score": 0.1, "reward": 5.0}  # the original is unchanged


# ---- harvested_fields ---------------------------------------------------------------------------
def _report(**kw: Any) -> ResultsReport:
    return ResultsReport(**{"outcome": "succeeded", **kw})


def test_harvested_fields_sets_score_from_the_objective() -> None:
    report = _report(scores={"reward": 12.0, "collisions": 0.2})
    fields = harvested_fields(report, {"objective": {"metric": "reward"}})
    assert fields["results"] == {"collisions": 0.2, "reward": 12.0}
    assert fields["score"] == 12.0
    assert "score" not in harvested_fields(report, {})  # pdm_score was not reported


def test_harvested_fields_keeps_at_most_max_results_and_always_the_objective() -> None:
    scores = {f"m{i:02d}": float(i) for i in range(40)}
    scores["zz_objective"] = 0.99  # sorts last: would be cut by name order alone
    fields = harvested_fields(_report(scores=scores), {"objective": {"metric": "zz_objective"}})
    assert MAX_RESULTS == 32
    assert len(fields["results"]) == 32
    assert fields["results"]["zz_objective"] == 0.99
    assert fields["score"] == 0.99
    assert sorted(fields["results"]) == [*(f"m{i:02d}" for i in range(31)), "zz_objective"]


def test_harvested_fields_cuts_by_name_when_the_objective_is_already_kept() -> None:
    scores = {f"m{i:02d}": float(i) for i in range(40)}
    fields = harvested_fields(_report(scores=scores), {"objective": {"metric": "m03"}})
    assert list(fields["results"]) == [f"m{i:02d}" for i in range(32)]
    assert fields["score"] == 3.0


def test_harvested_fields_checkpoints_drop_missing_values() -> None:
    report = _report(checkpoints=CheckpointsReport(best="s3://b/best.pt", best_step=400))
    assert harvested_fields(report, {})["checkpoints"] == {
        "best": "s3://b/best.pt",
        "bestStep": 400,
    }
    assert harvested_fields(_report(), {})["checkpoints"] == {}


def test_harvested_fields_provenance_from_the_environment_report() -> None:
    env = EnvironmentReport(
        python_version="3.11.9", torch_version="2.3.0", cuda_version=None, device="cuda:0"
    )
    fields = harvested_fields(_report(environment=env), {})
    assert fields["provenance"] == {
        "pythonVersion": "3.11.9",
        "torchVersion": "2.3.0",
        "device": "cuda:0",
    }
    assert harvested_fields(_report(), {})["provenance"] == {}


# ---- failure_message ----------------------------------------------------------------------------
def test_failure_message() -> None:
    assert failure_message(_report(error="ignored")) is None
    failed = ResultsReport(
        outcome="failed", error="unknown environment 'foo-v0'", error_field="spec.environment.id"
    )
    assert failure_message(failed) == "unknown environment 'foo-v0' (spec.environment.id)"
    assert failure_message(ResultsReport(outcome="failed")) == "the trainer reported a failure"


# ---- harvest_patch ------------------------------------------------------------------------------
def _experiment() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "ppo-1",
            "namespace": "ns",
            "resourceVersion": "4711",
            "generation": 2,
        },
        "status": {
            "phase": "Succeeded",
            "score": 0.5,
            "results": {"pdm_score": 0.5, "old_metric": 1.0},
            "checkpoints": {
                "latest": "s3://b/old-latest",
                "best": "s3://b/old-best",
                "bestStep": 9,
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Done",
                    "message": "",
                    "lastTransitionTime": "2024-01-01T00:00:00Z",
                }
            ],
        },
    }


def _new_report(**kw: Any) -> ResultsReport:
    return ResultsReport(
        **{
            "outcome": "succeeded",
            "scores": {"pdm_score": 0.8, "reward": 3.0},
            "checkpoints": CheckpointsReport(latest="s3://b/new-latest"),
            **kw,
        }
    )


def test_harvest_patch_removes_stale_results_and_checkpoints() -> None:
    patch = harvest_patch(_experiment(), _new_report(), {}, now=NOW)
    status = patch["status"]
    assert status["results"] == {"pdm_score": 0.8, "reward": 3.0, "old_metric": None}
    assert status["checkpoints"] == {"latest": "s3://b/new-latest", "best": None, "bestStep": None}
    assert status["score"] == 0.8
    assert "phase" not in status  # success leaves the phase alone
    assert "provenance" not in status  # no environment report: nothing to patch


def test_harvest_patch_clears_the_score_when_the_objective_is_gone() -> None:
    report = _new_report(scores={"reward": 3.0})
    status = harvest_patch(_experiment(), report, {}, now=NOW)["status"]
    assert "score" in status
    assert status["score"] is None
    assert status["results"] == {"reward": 3.0, "old_metric": None, "pdm_score": None}


def test_harvest_patch_carries_the_resource_version() -> None:
    patch = harvest_patch(_experiment(), _new_report(), {}, now=NOW)
    assert patch["metadata"] == {"resourceVersion": "4711"}


def test_harvest_patch_sets_the_harvested_condition_and_keeps_others() -> None:
    conditions = harvest_patch(_experiment(), _new_report(), {}, now=NOW)["status"]["conditions"]
    assert [c["type"] for c in conditions] == ["Ready", "Harvested"]
    assert conditions[0] == _experiment()["status"]["conditions"][0]
    assert conditions[1] == {
        "type": "Harvested",
        "status": "True",
        "reason": "ResultsHarvested",
        "message": "2 score(s) harvested again by kexp harvest",
        "lastTransitionTime": NOW,
        "observedGeneration": 2,
    }


def test_harvest_patch_moves_a_trainer_failure_to_failed() -> None:
    report = _new_report(outcome="failed", error="NaN loss", error_field="spec.hyperparameters")
    status = harvest_patch(_experiment(), report, {}, now=NOW)["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "TrainerFailed"
    assert status["message"] == "NaN loss (spec.hyperparameters)"


def test_harvest_patch_includes_provenance_from_the_environment() -> None:
    report = _new_report(environment=EnvironmentReport(python_version="3.12.1", device="cpu"))
    status = harvest_patch(_experiment(), report, {}, now=NOW)["status"]
    assert status["provenance"] == {"pythonVersion": "3.12.1", "device": "cpu"}


def test_harvest_patch_does_not_change_its_input() -> None:
    exp = _experiment()
    harvest_patch(exp, _new_report(), {}, now=NOW)
    assert exp == _experiment()


def test_harvesting_twice_gives_the_same_status() -> None:
    report = _new_report(environment=EnvironmentReport(python_version="3.12.1"))
    exp = _experiment()
    first = harvest_patch(exp, report, {}, now=NOW)
    once = _merge_patch(exp["status"], first["status"])
    assert once["results"] == {"pdm_score": 0.8, "reward": 3.0}
    assert once["checkpoints"] == {"latest": "s3://b/new-latest"}
    second = harvest_patch({**exp, "status": once}, report, {}, now="2024-05-02T00:00:00Z")
    twice = _merge_patch(once, second["status"])
    assert twice == once
