"""The PDM-style score and the run aggregates, against values computed by hand."""

from __future__ import annotations

import math
import re

import pytest

from kexp_trainers.envs.scores import EpisodeMetrics, aggregate, pdm_score


@pytest.mark.parametrize(
    ("nc", "dac", "ep", "ttc", "c", "expected"),
    [
        (1, 1, 1, 1, 1, 1.0),  # a perfect episode
        (0, 1, 1, 1, 1, 0.0),  # a collision voids it
        (1, 0, 1, 1, 1, 0.0),  # so does leaving the drivable area
        (1, 1, 0.5, 1, 1, (5 * 0.5 + 5 + 2) / 12),  # 9.5 / 12
        (1, 1, 0.8, 0, 1, (5 * 0.8 + 0 + 2) / 12),  # 6 / 12 = 0.5
        (1, 1, 0.0, 0, 1, 2 / 12),  # only comfort
        (0.5, 1, 1, 1, 0, 0.5 * 10 / 12),  # NAVSIM's half penalty for static collisions
    ],
)
def test_pdm_score_matches_hand_computed_values(
    nc: float, dac: float, ep: float, ttc: float, c: float, expected: float
) -> None:
    assert math.isclose(pdm_score(nc, dac, ep, ttc, c), expected)


def test_aggregate_averages_episode_scores_not_the_score_of_averages() -> None:
    crash = EpisodeMetrics(
        reward=2.0,
        no_collision=0,
        drivable_area_compliance=1,
        ego_progress=1,
        ttc_compliance=1,
        comfort=1,
    )
    clean = EpisodeMetrics(
        reward=4.0,
        no_collision=1,
        drivable_area_compliance=1,
        ego_progress=0.5,
        ttc_compliance=1,
        comfort=1,
    )
    scores = aggregate([crash, clean])
    assert scores["episodes"] == 2
    assert scores["reward"] == 3.0
    assert scores["reward_std"] == 1.0
    assert scores["collision_rate"] == 0.5
    assert scores["ego_progress"] == 0.75
    # (0 + 9.5/12) / 2, whereas the score of the means would be 0.5 * (5*0.75+5+2)/12.
    assert math.isclose(scores["pdm_score"], 9.5 / 24)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ego_progress", 1.5, "ego_progress must be in [0, 1], got 1.5"),
        ("comfort", -0.1, "comfort must be in [0, 1], got -0.1"),
        ("reward", float("nan"), "reward must be a number"),
    ],
)
def test_out_of_range_metrics_are_refused_naming_the_field(
    field: str, value: float, message: str
) -> None:
    values = {
        "reward": 0.0,
        "no_collision": 1.0,
        "drivable_area_compliance": 1.0,
        "ego_progress": 1.0,
        "ttc_compliance": 1.0,
        "comfort": 1.0,
        field: value,
    }
    with pytest.raises(ValueError, match=re.escape(message)):
        EpisodeMetrics(**values)


def test_no_episodes_is_an_error() -> None:
    with pytest.raises(ValueError, match="no evaluation episodes"):
        aggregate([])
