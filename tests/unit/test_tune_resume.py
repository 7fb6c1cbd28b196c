"""A sweep restored from a searcher state older than its trials goes on from the trials.

Real Ray Tune searchers throughout; the saved state is what Tune itself writes (a searcher's
``save_to_dir`` and trials' ``get_json_state``), caught at the moment a pod killed mid-upload
leaves it: the searcher saved before the second trial was made, the trials after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.experiment import Experiment, Trial
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from kexp_trainers.tune.resume import (
    RestoredTrial,
    ResumableSearchGenerator,
    ResumableVariantGenerator,
    restored_trials,
)
from kexp_trainers.tune.space import SIGNAL

SPACE = {"lr": tune.loguniform(1e-4, 1e-1)}
SAMPLES = 4


def trainable(config: dict[str, Any]) -> dict[str, float]:
    return {SIGNAL: float(config["lr"])}


def experiment() -> Experiment:
    return Experiment("sweep", trainable, config=SPACE, num_samples=SAMPLES)


def write_trials(folder: Path, session: str, trials: dict[Trial, str]) -> None:
    """The experiment state Tune writes, with these trials in these statuses."""
    data = []
    for trial, status in trials.items():
        trial.set_status(status)
        trial._state_json = None  # Tune caches the JSON; the status just changed
        data.append(list(trial.get_json_state()))
    state = {"trial_data": data, "runner_data": {}, "stats": {}}
    (folder / f"experiment_state-{session}.json").write_text(json.dumps(state))


def variant_generator(cls: type[BasicVariantGenerator], limit: int) -> BasicVariantGenerator:
    generator = cls(random_state=1, max_concurrent=limit)
    generator.add_configurations([experiment()])
    return generator


def stale_variant_state(folder: Path, limit: int) -> tuple[Trial, Trial]:
    """Saved with the first trial live; the trials saved with it done and the second running."""
    first_run = variant_generator(ResumableVariantGenerator, limit)
    first = first_run.next_trial()
    first_run.save_to_dir(str(folder), "s1")
    first_run.on_trial_complete(first.trial_id)
    second = first_run.next_trial()
    write_trials(folder, "s1", {first: Trial.TERMINATED, second: Trial.RUNNING})
    return first, second


def test_the_newest_experiment_state_names_the_trials(tmp_path: Path) -> None:
    assert restored_trials(tmp_path) is None
    generator = variant_generator(BasicVariantGenerator, 0)
    first, second = generator.next_trial(), generator.next_trial()
    write_trials(tmp_path, "2026-12-06_18-27-11", {first: Trial.RUNNING})
    write_trials(tmp_path, "2026-12-06_18-27-29", {first: Trial.TERMINATED, second: Trial.PENDING})
    assert restored_trials(tmp_path) == [
        RestoredTrial(first.trial_id, "TERMINATED"),
        RestoredTrial(second.trial_id, "PENDING"),
    ]


def test_a_limited_variant_generator_behind_its_trials_neither_hangs_nor_repeats_samples(
    tmp_path: Path,
) -> None:
    reference = variant_generator(BasicVariantGenerator, 0)
    expected = [reference.next_trial().config for _ in range(SAMPLES)]
    _, second = stale_variant_state(tmp_path, limit=1)

    # Ray's own generator waits for the first trial, which will never end again: the hang.
    upstream = variant_generator(BasicVariantGenerator, 1)
    upstream.restore_from_dir(str(tmp_path))
    upstream.on_trial_complete(second.trial_id)
    assert upstream.next_trial() is None
    assert not upstream.is_finished()

    resumed = variant_generator(ResumableVariantGenerator, 1)
    resumed.restore_from_dir(str(tmp_path))
    assert resumed.next_trial() is None  # the second trial is live again: the limit holds
    resumed.on_trial_complete(second.trial_id)
    third = resumed.next_trial()
    assert third.trial_id == second.trial_id[:-5] + "00002"
    assert third.config == expected[2]  # the sample it drew for the third trial the first time
    resumed.on_trial_complete(third.trial_id)
    fourth = resumed.next_trial()
    assert fourth.config == expected[3]
    resumed.on_trial_complete(fourth.trial_id)
    assert resumed.next_trial() is None
    assert resumed.is_finished()


def test_an_unlimited_variant_generator_behind_its_trials_makes_no_second_trial_of_a_name(
    tmp_path: Path,
) -> None:
    _, second = stale_variant_state(tmp_path, limit=0)

    upstream = variant_generator(BasicVariantGenerator, 0)
    upstream.restore_from_dir(str(tmp_path))
    # Ray's own would run a second trial 00001, writing over the first one's files in S3.
    assert upstream.next_trial().trial_id == second.trial_id

    resumed = variant_generator(ResumableVariantGenerator, 0)
    resumed.restore_from_dir(str(tmp_path))
    names = [resumed.next_trial().trial_id for _ in range(SAMPLES - 2)]
    assert names == [second.trial_id[:-5] + "00002", second.trial_id[:-5] + "00003"]
    assert resumed.next_trial() is None


def tpe(cls: type[SearchGenerator]) -> SearchGenerator:
    searcher = OptunaSearch(metric=SIGNAL, mode="max", sampler=optuna.samplers.TPESampler(seed=1))
    generator = cls(ConcurrencyLimiter(searcher, 1))
    generator.set_search_properties(None, None, SPACE)
    generator.add_configurations([experiment()])
    return generator


def test_a_tpe_search_behind_its_trials_neither_hangs_nor_fails_on_an_unknown_trial(
    tmp_path: Path,
) -> None:
    first_run = tpe(ResumableSearchGenerator)
    first = first_run.next_trial()
    first_run.save_to_dir(str(tmp_path), "s1")
    first_run.on_trial_complete(first.trial_id, {SIGNAL: 1.0})
    second = first_run.next_trial()
    write_trials(tmp_path, "s1", {first: Trial.TERMINATED, second: Trial.RUNNING})
    result = {SIGNAL: 2.0, "training_iteration": 1}

    upstream = tpe(SearchGenerator)
    upstream.restore_from_dir(str(tmp_path))
    upstream.on_trial_complete(second.trial_id, result)
    assert upstream.next_trial() is None  # the limiter still waits for the first trial
    assert not upstream.is_finished()

    resumed = tpe(ResumableSearchGenerator)
    resumed.restore_from_dir(str(tmp_path))
    assert resumed.untracked == {second.trial_id}
    assert resumed.next_trial() is None  # the second trial is live again: the limit holds
    resumed.on_trial_result(second.trial_id, result)
    resumed.on_trial_complete(second.trial_id, result)
    made = []
    while (trial := resumed.next_trial()) is not None:
        made.append(trial)
        resumed.on_trial_result(trial.trial_id, result)
        resumed.on_trial_complete(trial.trial_id, result)
    assert len(made) == SAMPLES - 2  # both restored trials count towards numSamples
    assert resumed.is_finished()


def test_a_tpe_search_ahead_of_its_trials_makes_new_trials_in_place_of_those_never_recorded(
    tmp_path: Path,
) -> None:
    first_run = tpe(ResumableSearchGenerator)
    first = first_run.next_trial()
    first_run.on_trial_complete(first.trial_id, {SIGNAL: 1.0})
    lost = first_run.next_trial()  # made, but the trials saved do not hold it
    first_run.save_to_dir(str(tmp_path), "s1")
    write_trials(tmp_path, "s1", {first: Trial.TERMINATED})

    resumed = tpe(ResumableSearchGenerator)
    resumed.restore_from_dir(str(tmp_path))
    made = []
    while (trial := resumed.next_trial()) is not None:
        made.append(trial.trial_id)
        resumed.on_trial_complete(trial.trial_id, {SIGNAL: 2.0})
    assert len(made) == SAMPLES - 1  # the restored trial and three new ones
    assert lost.trial_id not in made
    assert resumed.is_finished()
