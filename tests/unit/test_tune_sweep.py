"""The tune entry point's pure parts: search space, searchers, schedulers, the pre-flight
check, trial specs, the sweep report built from Tune's trials, and the merged metrics."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray.tune")

from ray import tune
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from kexp.api.models import Sweep
from kexp.api.reports import EnvironmentReport
from kexp_trainers.runtime.config import ConfigError
from kexp_trainers.tune import space
from kexp_trainers.tune.metrics import SweepMetrics
from kexp_trainers.tune.report import (
    TrialView,
    short_error,
    sweep_report,
    sweep_results,
    trial_state,
)
from kexp_trainers.tune.resume import ResumableSearchGenerator, ResumableVariantGenerator
from kexp_trainers.tune.trial import plain, trial_spec

BASE: dict[str, Any] = {
    "algorithm": "PPO",
    "environment": {"id": "CartPole-v1"},
    "hyperparameters": {"batchSize": 64},
    "training": {"totalSteps": 1000},
    "objective": {"metric": "reward", "mode": "max"},
}


def with_sweep(**sweep: Any) -> dict[str, Any]:
    return {**BASE, "sweep": {"numSamples": 2, **sweep}}


# ---- the search space ---------------------------------------------------------------------------
def test_each_kind_of_space_becomes_its_tune_domain() -> None:
    params = {
        "learningRate": {"logUniform": [1.0e-5, 1.0e-3]},
        "gamma": {"uniform": [0.9, 0.999]},
        "nSteps": {"randint": [64, 512]},
        "batchSize": {"choice": [32, 64]},
        "hidden": {"grid": [32, 64]},
    }
    got = space.param_space({"parameters": params})
    assert isinstance(got["learningRate"], tune.search.sample.Float)
    assert got["learningRate"].lower == 1.0e-5
    assert isinstance(got["learningRate"].get_sampler(), tune.search.sample.LogUniform)
    assert isinstance(got["gamma"].get_sampler(), tune.search.sample.Uniform)
    assert (got["nSteps"].lower, got["nSteps"].upper) == (64, 512)
    assert got["batchSize"].categories == [32, 64]
    assert got["hidden"] == {"grid_search": [32, 64]}


def test_the_grid_search_crosses_choice_parameters_too() -> None:
    got = space.param_space(
        {"searchAlgorithm": "grid", "parameters": {"batchSize": {"choice": [32, 64]}}}
    )
    assert got["batchSize"] == {"grid_search": [32, 64]}
    sweep = Sweep.model_validate(
        {
            "numSamples": 2,
            "searchAlgorithm": "grid",
            "parameters": {"a": {"choice": [1, 2, 3]}, "b": {"grid": [1, 2]}},
        }
    )
    assert sweep.planned_trials() == 12


def test_searchers_and_schedulers() -> None:
    random = space.search_algorithm({}, 1, 3)
    assert isinstance(random, BasicVariantGenerator)
    assert random.max_concurrent == 3  # Tune's max_concurrent_trials would ignore it
    assert isinstance(
        space.search_algorithm({"searchAlgorithm": "grid"}, 1, None), BasicVariantGenerator
    )
    assert isinstance(random, ResumableVariantGenerator)
    limited = space.search_algorithm({"searchAlgorithm": "tpe"}, 1, 2)
    assert isinstance(limited, ResumableSearchGenerator)
    assert isinstance(limited.searcher, ConcurrencyLimiter)
    assert limited.searcher.max_concurrent == 2
    assert isinstance(limited.searcher.searcher, OptunaSearch)
    assert space.scheduler({}) is None
    asha = space.scheduler({"scheduler": {"type": "asha", "gracePeriod": 2, "reductionFactor": 3}})
    assert isinstance(asha, ASHAScheduler)
    assert (asha._reduction_factor, asha._time_attr) == (3, "training_iteration")
    assert (asha.metric, asha._mode) == (space.PROGRESS, "max")
    median = space.scheduler({"scheduler": {"type": "median"}})
    assert isinstance(median, MedianStoppingRule)
    assert median.metric == space.PROGRESS
    tpe = space.search_algorithm({"searchAlgorithm": "tpe"}, 1, None).searcher
    assert isinstance(tpe, OptunaSearch)
    assert (tpe.metric, tpe.mode) == (space.SIGNAL, "max")


@pytest.mark.parametrize(
    ("stats", "metric", "expected"),
    [
        ({"episode_reward": 3.0}, "reward", 3.0),
        ({"episode_reward": 3.0}, "pdm_score", None),
        ({"pdm_score": 0.5, "episode_reward": 3.0}, "pdm_score", 0.5),
        ({}, "reward", None),
    ],
)
def test_the_objective_during_training(
    stats: dict[str, float], metric: str, expected: float | None
) -> None:
    assert space.training_objective(stats, metric) == expected


@pytest.mark.parametrize(
    ("stats", "metric", "mode", "expected"),
    [
        ({"episode_reward": 3.0}, "reward", "max", 3.0),
        # Not logged while training: schedulers go by the episode reward.
        ({"episode_reward": 3.0}, "pdm_score", "max", 3.0),
        ({"episode_reward": 3.0}, "collision_rate", "min", 3.0),
        ({"collision_rate": 0.25, "episode_reward": 3.0}, "collision_rate", "min", -0.25),
        ({"bc_loss": 0.1}, "pdm_score", "max", None),
    ],
)
def test_what_schedulers_compare_while_trials_train(
    stats: dict[str, float], metric: str, mode: str, expected: float | None
) -> None:
    assert space.training_progress(stats, metric, mode) == expected


def test_the_signal_is_higher_is_better() -> None:
    assert space.signal(0.2, "min") == -0.2
    assert space.signal(0.2, "max") == 0.2


# ---- pre-flight ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"learningrate": {"choice": [1.0e-3]}},
            "spec.sweep.parameters.learningrate: not a PPO hyperparameter",
        ),
        ({"nSteps": {"choice": [64, "many"]}}, "spec.sweep.parameters.nSteps: invalid literal"),
        (
            {"learningRate": {"choice": [1.0e-3, -1.0]}},
            "spec.sweep.parameters.learningRate: hyperparameters.learningRate must be a number",
        ),
    ],
)
def test_a_bad_parameter_is_refused_before_any_trial(
    parameters: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        space.check_parameters(with_sweep(parameters=parameters))
    assert info.value.field is not None
    assert info.value.field.startswith("spec.sweep.parameters.")


def test_good_parameters_pass_the_pre_flight_check() -> None:
    space.check_parameters(
        with_sweep(
            parameters={
                "learningRate": {"logUniform": [1.0e-5, 1.0e-3]},
                "nSteps": {"randint": [16, 128]},
                "hidden": {"grid": [16, 32]},
            }
        )
    )


def test_a_trials_spec_is_the_sweeps_with_its_values_and_no_sweep() -> None:
    import numpy as np

    got = trial_spec(
        with_sweep(parameters={"learningRate": {"choice": [1.0e-3]}}),
        {
            "learningRate": np.float64(1.0e-3),
            "nSteps": np.int64(32),
        },
    )
    assert "sweep" not in got
    assert got["hyperparameters"] == {"batchSize": 64, "learningRate": 1.0e-3, "nSteps": 32}
    assert type(got["hyperparameters"]["nSteps"]) is int
    assert plain(np.bool_(True)) is True
    with pytest.raises(ConfigError, match=r"spec\.hyperparameters"):
        trial_spec(BASE, {"batchSize": 0})


# ---- the report ---------------------------------------------------------------------------------
FINAL = {
    "kexp_final": True,
    "kexp_objective": 9.0,
    "kexp_eval": {"reward": 9.0, "episodes": 3},
    "kexp_checkpoint": "s3://b/p/trials/t0/checkpoints/best.pt",
    "step": 1000,
    "training_iteration": 8,
}


def test_tune_statuses_become_trial_states() -> None:
    assert trial_state(TrialView("t", "TERMINATED", last_result=FINAL)) == "completed"
    assert trial_state(TrialView("t", "TERMINATED", last_result={"step": 10})) == "stoppedEarly"
    assert trial_state(TrialView("t", "ERROR")) == "failed"
    assert trial_state(TrialView("t", "RUNNING")) == "running"
    assert trial_state(TrialView("t", "PAUSED")) == "running"
    assert trial_state(TrialView("t", "PENDING")) == "pending"


def test_short_errors_keep_the_last_line_without_module_paths() -> None:
    traceback = (
        "Failure # 1\nTraceback (most recent call last):\n  File x\n"
        "ray.exceptions.RayTaskError(ZeroDivisionError): boom\n"
        "kexp_trainers.runtime.config.ConfigError: spec.x: bad\n"
    )
    assert short_error(traceback) == "ConfigError: spec.x: bad"
    assert short_error("ZeroDivisionError: integer division or modulo by zero") == (
        "ZeroDivisionError: integer division or modulo by zero"
    )
    assert short_error("") is None


def test_the_report_of_a_sweep_and_its_results() -> None:
    views = [
        TrialView("t0", "TERMINATED", {"learningRate": 1.0e-3}, FINAL),
        TrialView("t1", "TERMINATED", {"learningRate": 1.0e-4}, {"kexp_objective": 20.0}),
        TrialView("t2", "ERROR", {"learningRate": 1.0e-2}, {}, "Traceback\nValueError: nope"),
        TrialView("t3", "RUNNING", {"learningRate": 1.0e-5}, {"step": 5}),
    ]
    running = sweep_report(views, metric="reward", mode="max", planned=8, now="T")
    assert running.outcome == "running"
    assert [t.state for t in running.trials] == ["completed", "stoppedEarly", "failed", "running"]
    first = running.trials[0]
    assert (first.score, first.step, first.iterations) == (9.0, 1000, 8)
    assert first.scores == {"reward": 9.0, "episodes": 3.0}
    assert first.checkpoint == "s3://b/p/trials/t0/checkpoints/best.pt"
    assert running.trials[2].error == "ValueError: nope"
    done = sweep_report(views[:3], metric="reward", mode="max", planned=8, outcome="succeeded")
    assert done.outcome == "succeeded"
    results = sweep_results(done, EnvironmentReport(python_version="3.11"))
    assert results.outcome == "succeeded"
    assert results.scores == {"reward": 9.0, "episodes": 3.0}  # the completed trial wins
    assert results.checkpoints.best == "s3://b/p/trials/t0/checkpoints/best.pt"


def test_a_sweep_whose_every_trial_failed_reports_failure_with_the_first_error() -> None:
    views = [TrialView("t0", "ERROR", error="ValueError: a"), TrialView("t1", "ERROR")]
    done = sweep_report(views, metric="reward", mode="max", planned=2, outcome="succeeded")
    assert done.outcome == "failed"
    assert done.error is None  # the sweep itself did not fail; its trials did
    results = sweep_results(done, None)
    assert results.outcome == "failed"
    assert results.error == "all 2 trial(s) failed; first error: trial t0: ValueError: a"


def test_the_metrics_of_every_trial_come_from_one_registry() -> None:
    metrics = SweepMetrics("sw", "lab")
    metrics.observe("t0", {"step": 100, "sps": 50.0, "episode_reward": 3.0, "policy_loss": 0.1})
    metrics.observe("t0", {"step": 300})
    metrics.observe("t1", {"step": 64, **FINAL})
    text = metrics.exposition()
    assert text.count("# TYPE kexp_trainer_steps_total counter") == 1
    assert 'kexp_trainer_steps_total{experiment="sw",namespace="lab",trial="t0"} 300.0' in text
    assert 'kexp_trainer_steps_total{experiment="sw",namespace="lab",trial="t1"} 1000.0' in text
    assert (
        'kexp_trainer_eval_score{experiment="sw",metric="reward",namespace="lab",trial="t1"}'
        in (text)
    )
    assert 'kexp_trainer_loss{experiment="sw",loss="policy_loss",namespace="lab",trial="t0"}' in (
        text
    )
