"""Flat records of Experiments (kexp list/export) and side-by-side comparison."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kexp.analysis.compare import best_index, compare
from kexp.analysis.records import (
    HEAD_COLUMNS,
    UnknownColumn,
    columns_for,
    matches,
    percent,
    record,
    select_columns,
    sort_records,
)

TEMPLATE_SPEC: dict[str, Any] = {
    "algorithm": "dqn",
    "hyperparameters": {"learningRate": 0.001, "gamma": 0.99},
    "resources": {"cpu": "2", "memory": "4Gi"},
    "evaluation": {"episodes": 10},
    "tags": ["from-template"],
}


def _experiment() -> dict[str, Any]:
    return {
        "apiVersion": "kexp.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {
            "name": "ppo-lr3",
            "namespace": "team-a",
            "uid": "0c6e-uid",
            "creationTimestamp": "2024-05-01T10:00:00Z",
        },
        "spec": {
            "templateRef": "ppo-base",
            "algorithm": "ppo",
            "description": "learning-rate sweep",
            "tags": ["lr", "baseline"],
            "environment": {"id": "highway-v0", "numEnvs": 8},
            "hyperparameters": {
                "learningRate": 0.0003,
                "clip": {"range": 0.2},
                "netArch": [64, 64],
            },
            "training": {"totalSteps": 100000, "seed": 7},
            "objective": {"metric": "pdm_score", "mode": "max"},
            "initFrom": {"experiment": "ppo-pretrain"},
        },
        "status": {
            "phase": "Succeeded",
            "score": 0.81,
            "progress": {"step": 50000, "totalSteps": 100000},
            "provenance": {
                "gitCommit": "abc123",
                "gitBranch": "main",
                "gitDirty": False,
                "repository": "https://git.example/rl.git",
                "image": "ghcr.io/x/trainer@sha256:00ff",
                "configHash": "1234abcd",
                "initFromCheckpoint": "s3://b/ppo-pretrain/best.pt",
                "startedAt": "2024-05-01T10:00:00Z",
                "completedAt": "2024-05-01T10:30:15Z",
            },
            "checkpoints": {"best": "s3://b/best.pt", "bestStep": 40000, "latest": "s3://b/l.pt"},
            "results": {"pdm_score": 0.81, "reward": 12.5},
        },
    }


# ---- record -------------------------------------------------------------------------------------
def test_record_head_fields() -> None:
    rec = record(_experiment())
    assert rec["namespace"] == "team-a"
    assert rec["name"] == "ppo-lr3"
    assert rec["uid"] == "0c6e-uid"
    assert rec["phase"] == "Succeeded"
    assert rec["algorithm"] == "ppo"
    assert rec["environment"] == "highway-v0"
    assert rec["template"] == "ppo-base"
    assert rec["tags"] == "lr;baseline"
    assert rec["description"] == "learning-rate sweep"
    assert rec["objective"] == "pdm_score"
    assert rec["mode"] == "max"
    assert rec["score"] == 0.81
    assert rec["step"] == 50000
    assert rec["total_steps"] == 100000
    assert rec["git_commit"] == "abc123"
    assert rec["git_dirty"] is False
    assert rec["image"] == "ghcr.io/x/trainer@sha256:00ff"
    assert rec["init_from"] == "ppo-pretrain"
    assert rec["init_from_checkpoint"] == "s3://b/ppo-pretrain/best.pt"
    assert rec["best_checkpoint"] == "s3://b/best.pt"
    assert rec["best_step"] == 40000
    assert rec["latest_checkpoint"] == "s3://b/l.pt"
    assert rec["created"] == "2024-05-01T10:00:00Z"
    assert rec["duration_s"] == 1815.0


def test_record_flattens_settings_and_results() -> None:
    rec = record(_experiment())
    assert rec["hp.learningRate"] == 0.0003
    assert rec["hp.clip.range"] == 0.2  # nested maps flatten with dots
    assert rec["hp.netArch"] == "[64,64]"  # lists become compact JSON
    assert rec["train.totalSteps"] == 100000
    assert rec["train.seed"] == 7
    assert rec["env.numEnvs"] == 8
    assert "env.id" not in rec  # the environment id is a head column
    assert rec["result.pdm_score"] == 0.81
    assert rec["result.reward"] == 12.5
    assert "hp.gamma" not in rec  # no template given


def test_record_merges_the_template_with_the_experiment_winning() -> None:
    rec = record(_experiment(), TEMPLATE_SPEC)
    assert rec["algorithm"] == "ppo"  # experiment wins over the template's dqn
    assert rec["hp.learningRate"] == 0.0003
    assert rec["hp.gamma"] == 0.99  # from the template
    assert rec["res.cpu"] == "2"
    assert rec["res.memory"] == "4Gi"
    assert rec["eval.episodes"] == 10
    assert rec["tags"] == "lr;baseline"  # lists are replaced, not concatenated


def test_record_does_not_change_its_inputs() -> None:
    exp, template = _experiment(), copy.deepcopy(TEMPLATE_SPEC)
    record(exp, template)
    assert exp == _experiment()
    assert template == TEMPLATE_SPEC


def test_record_of_a_new_experiment_has_defaults() -> None:
    rec = record({"metadata": {"name": "fresh"}, "spec": {"algorithm": "ppo"}})
    assert rec["phase"] == "Pending"
    assert rec["objective"] == "pdm_score"
    assert rec["mode"] == "max"
    assert rec["tags"] == ""
    assert rec["score"] is None
    assert rec["duration_s"] is None
    assert set(rec) == set(HEAD_COLUMNS)


def test_record_prefers_status_algorithm_and_spec_total_steps() -> None:
    exp = {
        "metadata": {"name": "x"},
        "spec": {"algorithm": "ppo", "training": {"totalSteps": 500}},
        "status": {"algorithm": "sac", "environment": "pendulum-v1"},
    }
    rec = record(exp)
    assert rec["algorithm"] == "sac"
    assert rec["environment"] == "pendulum-v1"
    assert rec["total_steps"] == 500


# ---- columns ------------------------------------------------------------------------------------
def _variable_record() -> dict[str, Any]:
    return {
        "result.reward": 1.0,
        "res.cpu": "2",
        "hp.b": 1,
        "zz_other": 1,
        "eval.episodes": 3,
        "train.seed": 1,
        "hp.a": 2,
        "env.numEnvs": 4,
        "name": "x",
        "result.pdm_score": 0.5,
    }


def test_columns_for_head_first_then_each_group_sorted() -> None:
    columns = columns_for([_variable_record()])
    assert columns[: len(HEAD_COLUMNS)] == list(HEAD_COLUMNS)
    assert columns[len(HEAD_COLUMNS) :] == [
        "hp.a",
        "hp.b",
        "train.seed",
        "env.numEnvs",
        "eval.episodes",
        "res.cpu",
        "result.pdm_score",
        "result.reward",
        "zz_other",
    ]


def test_columns_for_is_stable_under_input_order() -> None:
    a = {"hp.lr": 1, "result.x": 1}
    b = {"hp.gamma": 1, "train.seed": 2}
    c = dict(reversed(list(_variable_record().items())))
    assert columns_for([a, b, c]) == columns_for([c, b, a]) == columns_for([b, c, a])


def test_columns_for_real_records() -> None:
    columns = columns_for([record(_experiment(), TEMPLATE_SPEC), record(_experiment())])
    assert columns[len(HEAD_COLUMNS) :] == [
        "hp.clip.range",
        "hp.gamma",
        "hp.learningRate",
        "hp.netArch",
        "train.seed",
        "train.totalSteps",
        "env.numEnvs",
        "eval.episodes",
        "res.cpu",
        "res.memory",
        "result.pdm_score",
        "result.reward",
    ]


def test_select_columns_keeps_the_order_asked_for() -> None:
    available = columns_for([_variable_record()])
    assert select_columns(available, ["score", "name", "hp.*"]) == ["score", "name", "hp.a", "hp.b"]
    assert select_columns(available, ["result.*", "namespace"]) == [
        "result.pdm_score",
        "result.reward",
        "namespace",
    ]


def test_select_columns_does_not_repeat_a_column() -> None:
    available = columns_for([_variable_record()])
    assert select_columns(available, ["hp.b", "hp.*", "hp.b"]) == ["hp.b", "hp.a"]


def test_select_columns_unknown_column_error() -> None:
    available = columns_for([_variable_record()])
    with pytest.raises(UnknownColumn) as info:
        select_columns(available, ["name", "bogus"])
    message = str(info.value)
    assert message.startswith("--columns: no column 'bogus'; available: namespace, name, phase")
    assert message.endswith(", ...")  # more than 12 available
    with pytest.raises(UnknownColumn, match=r"no column 'nothing\.\*'"):
        select_columns(available, ["nothing.*"])


def test_select_columns_short_list_has_no_ellipsis() -> None:
    with pytest.raises(UnknownColumn) as info:
        select_columns(["a", "b"], ["c"])
    assert str(info.value) == "--columns: no column 'c'; available: a, b"


# ---- matches ------------------------------------------------------------------------------------
REC = {"phase": "Succeeded", "algorithm": "PPO", "tags": "lr;baseline"}


def test_matches_without_filters() -> None:
    assert matches(REC)
    assert matches({})


def test_matches_phase_any_of_case_insensitive() -> None:
    assert matches(REC, phases=["succeeded"])
    assert matches(REC, phases=["Failed", "SUCCEEDED"])
    assert not matches(REC, phases=["Failed", "Running"])


def test_matches_tags_all_of() -> None:
    assert matches(REC, tags=["lr"])
    assert matches(REC, tags=["baseline", "lr"])
    assert not matches(REC, tags=["lr", "other"])
    assert not matches({"tags": ""}, tags=["lr"])


def test_matches_algorithm_any_of() -> None:
    assert matches(REC, algorithms=["ppo"])
    assert matches(REC, algorithms=["sac", "Ppo"])
    assert not matches(REC, algorithms=["sac"])
    assert not matches(REC, phases=["succeeded"], algorithms=["sac"])


# ---- sorting ------------------------------------------------------------------------------------
def _names(records: list[dict[str, Any]]) -> list[str]:
    return [r["name"] for r in records]


def test_sort_by_score_best_first_for_max() -> None:
    recs = [
        {"name": "a", "score": 0.5, "mode": "max"},
        {"name": "b", "score": None, "mode": "max"},
        {"name": "c", "score": 0.9, "mode": "max"},
        {"name": "d", "score": 0.1, "mode": "max"},
    ]
    assert _names(sort_records(recs, "score")) == ["c", "a", "d", "b"]


def test_sort_by_score_best_first_for_min() -> None:
    recs = [
        {"name": "a", "score": 0.5, "mode": "min"},
        {"name": "b", "mode": "min"},
        {"name": "c", "score": 0.9, "mode": "min"},
        {"name": "d", "score": 0.1, "mode": "min"},
    ]
    assert _names(sort_records(recs, "SCORE")) == ["d", "a", "c", "b"]


def test_sort_unscored_last_by_name() -> None:
    recs = [{"name": "z"}, {"name": "y", "score": "n/a"}, {"name": "x", "score": 1.0}]
    assert _names(sort_records(recs, "score")) == ["x", "y", "z"]


def test_sort_by_age_newest_first() -> None:
    recs = [
        {"name": "old", "created": "2024-01-01T00:00:00Z"},
        {"name": "new", "created": "2024-06-01T00:00:00Z"},
        {"name": "mid", "created": "2024-03-01T00:00:00Z"},
    ]
    assert _names(sort_records(recs, "age")) == ["new", "mid", "old"]


def test_sort_by_name_and_progress() -> None:
    recs = [
        {"namespace": "b", "name": "a", "step": 10, "total_steps": 100},
        {"namespace": "a", "name": "z", "step": 90, "total_steps": 100},
        {"namespace": "a", "name": "m", "step": 50, "total_steps": 100},
    ]
    assert _names(sort_records(recs, "name")) == ["m", "z", "a"]
    assert _names(sort_records(recs, "progress")) == ["z", "m", "a"]


def test_sort_unknown_key() -> None:
    with pytest.raises(ValueError, match="unknown key") as info:
        sort_records([], "bogus")
    assert str(info.value) == (
        "--sort: unknown key 'bogus'; use one of name, age, score, phase, progress"
    )


@pytest.mark.parametrize(
    ("rec", "expected"),
    [
        ({"step": 50, "total_steps": 200}, 25.0),
        ({"step": 300, "total_steps": 200}, 100.0),
        ({"step": 0, "total_steps": 200}, 0.0),
        ({"phase": "Succeeded"}, 100.0),
        ({"step": 5, "total_steps": 0, "phase": "Succeeded"}, 100.0),
        ({"step": 5, "total_steps": 0, "phase": "Running"}, None),
        ({"phase": "Pending"}, None),
    ],
)
def test_percent(rec: dict[str, Any], expected: float | None) -> None:
    assert percent(rec) == expected


# ---- compare ------------------------------------------------------------------------------------
A = {
    "namespace": "ns",
    "name": "a",
    "uid": "1",
    "created": "2024-01-01T00:00:00Z",
    "algorithm": "ppo",
    "phase": "Succeeded",
    "reason": None,
    "score": 0.5,
    "train.seed": 1,
    "hp.lr": 0.1,
    "hp.gamma": 0.99,
    "result.reward": 3.0,
}
B = {
    **A,
    "name": "b",
    "uid": "2",
    "created": "2024-02-01T00:00:00Z",
    "score": 0.7,
    "train.seed": 2,
    "hp.lr": 0.2,
    "result.reward": 4.0,
    "result.extra": 1.0,
}


def test_compare_shows_only_differing_settings() -> None:
    result = compare([A, B])
    assert result.names == ["a", "b"]
    assert result.settings == [("hp.lr", [0.1, 0.2]), ("train.seed", [1, 2])]
    assert result.same == 2  # algorithm and hp.gamma


def test_compare_show_all() -> None:
    result = compare([A, B], show_all=True)
    assert [k for k, _ in result.settings] == ["algorithm", "hp.gamma", "hp.lr", "train.seed"]
    assert result.settings[1] == ("hp.gamma", [0.99, 0.99])
    assert result.same == 0


def test_compare_results_rows() -> None:
    result = compare([A, B])
    assert result.results == [
        ("phase", ["Succeeded", "Succeeded"]),
        ("score", [0.5, 0.7]),
        ("result.extra", [None, 1.0]),
        ("result.reward", [3.0, 4.0]),
    ]


def test_compare_setting_missing_in_one_differs() -> None:
    result = compare([{**A, "hp.new": 5}, B])
    assert ("hp.new", [5, None]) in result.settings


def test_compare_real_records() -> None:
    first = record(_experiment(), TEMPLATE_SPEC)
    other = _experiment()
    other["metadata"]["name"] = "ppo-lr4"
    other["spec"]["hyperparameters"]["learningRate"] = 0.0004
    second = record(other, TEMPLATE_SPEC)
    result = compare([first, second])
    assert result.names == ["ppo-lr3", "ppo-lr4"]
    assert result.settings == [("hp.learningRate", [0.0003, 0.0004])]
    assert result.same > 10


def test_best_index() -> None:
    assert best_index([A, B]) == 1
    assert best_index([{**A, "mode": "min"}, {**B, "mode": "min"}]) == 0
    assert best_index([{"score": None}, {"score": 2.0}, {"score": 1.0}]) == 1
    assert best_index([{"name": "x"}, {"score": None}]) is None
    assert best_index([]) is None
