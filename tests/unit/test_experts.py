"""The scripted experts: the highway driver's decisions on hand-made scenes, then real episodes."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from kexp_trainers.envs.experts import (
    FASTER,
    IDLE,
    LANE_LEFT,
    LANE_RIGHT,
    SLOWER,
    CartPoleExpert,
    HighwayExpert,
    LaneView,
    PendulumExpert,
    closing_time,
    expert_for,
    time_gap,
)
from kexp_trainers.envs.highway import episode_metrics, make_env
from kexp_trainers.envs.scores import aggregate

EMPTY = LaneView(front_gap=None, front_speed=0.0, rear_gap=None, rear_speed=0.0)
MID = (False, False)  # neither at the lowest nor at the highest target speed
TOP = (False, True)
BOTTOM = (True, False)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def ahead(gap: float, speed: float) -> LaneView:
    return LaneView(front_gap=gap, front_speed=speed, rear_gap=None, rear_speed=0.0)


def test_gap_arithmetic() -> None:
    assert time_gap(50.0, 25.0) == 2.0
    assert time_gap(None, 25.0) == math.inf
    assert closing_time(30.0, 25.0, 20.0) == 6.0
    assert closing_time(30.0, 20.0, 25.0) == math.inf
    assert closing_time(-1.0, 20.0, 25.0) == 0.0


def test_keeps_its_distance() -> None:
    expert = HighwayExpert()
    # 1 s headway at 25 m/s: too close, whatever the leader does.
    assert expert.longitudinal(ahead(25.0, 25.0), 25.0, at_top=False) == SLOWER
    # 2.8 s headway closing at 10 m/s: 7 s to contact is fine, one step faster (4.7 s) is not.
    assert expert.longitudinal(ahead(70.0, 15.0), 25.0, at_top=False) == IDLE
    assert expert.longitudinal(ahead(80.0, 15.0), 25.0, at_top=False) == FASTER  # 5.3 s
    # Free road: speed up, unless already at the top speed.
    assert expert.longitudinal(EMPTY, 25.0, at_top=False) == FASTER
    assert expert.longitudinal(EMPTY, 30.0, at_top=True) == IDLE


def test_overtakes_through_a_free_safe_lane() -> None:
    expert = HighwayExpert()
    blocked = ahead(30.0, 20.0)
    assert expert.choose(blocked, EMPTY, None, 25.0, MID, changing=False) == LANE_LEFT
    # Not while a lane change is under way.
    assert expert.choose(blocked, EMPTY, None, 25.0, MID, changing=True) == SLOWER
    # Not in front of a fast follower: brake in lane instead.
    closing_fast = LaneView(front_gap=None, front_speed=0.0, rear_gap=10.0, rear_speed=30.0)
    assert expert.choose(blocked, closing_fast, None, 25.0, MID, changing=False) == SLOWER
    # Not into a lane that is no better.
    assert expert.choose(blocked, ahead(30.0, 20.0), None, 25.0, MID, changing=False) == SLOWER


def test_keeps_right_when_it_costs_nothing() -> None:
    expert = HighwayExpert()
    assert expert.choose(EMPTY, None, EMPTY, 30.0, TOP, changing=False) == LANE_RIGHT
    # A slower lane on the right is not worth it.
    assert expert.choose(EMPTY, None, ahead(40.0, 20.0), 30.0, TOP, changing=False) == IDLE


def test_escapes_sideways_when_braking_can_do_no_more() -> None:
    expert = HighwayExpert()
    stuck = ahead(5.0, 15.0)
    tight = ahead(15.0, 22.0)  # too close for a comfortable change, but pulling away
    # At the lowest target speed, with a leader still slower: take the tight lane.
    assert expert.choose(stuck, tight, None, 20.0, BOTTOM, changing=False) == LANE_LEFT
    # Above it, braking comes first.
    assert expert.choose(stuck, tight, None, 25.0, MID, changing=False) == SLOWER
    # Never in front of a follower about to arrive.
    crowded = LaneView(front_gap=15.0, front_speed=22.0, rear_gap=3.0, rear_speed=25.0)
    assert expert.choose(stuck, crowded, None, 20.0, BOTTOM, changing=False) == SLOWER


def test_refuses_another_action_space() -> None:
    env = make_env("highway-fast-v0", {"action": {"type": "ContinuousAction"}}, seed=0)
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match=r"spec\.environment\.config\.action"):
        HighwayExpert().act(env, obs)


def run(env: Any, expert: Any, episodes: int) -> list[tuple[float, dict[str, Any]]]:
    results = []
    for seed in range(episodes):
        obs, info = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(expert.act(env, obs))
            total += float(reward)
            done = terminated or truncated
        results.append((total, info))
    return results


def test_highway_expert_drives_safely_and_beats_random() -> None:
    env = make_env("highway-fast-v0", {}, seed=0)
    expert_scores = aggregate(
        [m for t, i in run(env, HighwayExpert(), 5) if (m := episode_metrics(t, i))]
    )

    class Random:
        def act(self, env: Any, obs: np.ndarray) -> int:
            return int(env.action_space.sample())

    random_scores = aggregate([m for t, i in run(env, Random(), 5) if (m := episode_metrics(t, i))])
    assert expert_scores["collision_rate"] == 0.0
    assert expert_scores["pdm_score"] > 0.75
    assert expert_scores["pdm_score"] > random_scores["pdm_score"] + 0.3


def test_cartpole_expert_balances_to_the_limit() -> None:
    returns = [t for t, _ in run(make_env("CartPole-v1", {}, seed=0), CartPoleExpert(), 3)]
    assert returns == [500.0, 500.0, 500.0]


def test_pendulum_expert_swings_up_and_holds() -> None:
    env = make_env("Pendulum-v1", {}, seed=0)
    returns = [t for t, _ in run(env, PendulumExpert(), 5)]
    assert np.mean(returns) > -250  # random torques score about -1200
    action = PendulumExpert().act(env, np.array([1.0, 0.0, 0.0], dtype=np.float32))
    assert env.action_space.contains(action)


def test_expert_for() -> None:
    assert isinstance(expert_for("highway-fast-v0"), HighwayExpert)
    assert isinstance(expert_for("CartPole-v1"), CartPoleExpert)
    assert isinstance(expert_for("Pendulum-v1"), PendulumExpert)
    with pytest.raises(ValueError, match=r"spec\.environment\.id: no expert for 'Acrobot-v1'"):
        expert_for("Acrobot-v1")
