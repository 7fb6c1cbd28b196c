"""The environment factory and the AD metrics: pure arithmetic by hand, then the simulator."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest

from kexp_trainers.envs.highway import (
    ADMetrics,
    comfort_flags,
    ego_progress,
    episode_metrics,
    fraction,
    is_highway_env,
    make_env,
    time_to_collision,
    ttc_compliant,
)
from kexp_trainers.envs.scores import EpisodeMetrics

IDLE, FASTER = 1, 3
#: Short episodes keep the simulator tests quick.
SHORT = {"duration": 8}


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def run_episode(env: Any, policy: Any, seed: int) -> tuple[float, dict[str, Any], list[Any]]:
    obs, info = env.reset(seed=seed)
    observations = [obs]
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        observations.append(obs)
        total += float(reward)
        done = terminated or truncated
    return total, info, observations


# ---- pure arithmetic ----------------------------------------------------------------------------
def test_time_to_collision_by_hand() -> None:
    assert time_to_collision(30.0, 25.0, 20.0) == pytest.approx(6.0)
    assert time_to_collision(None, 25.0, 20.0) == math.inf  # nobody ahead
    assert time_to_collision(30.0, 20.0, 25.0) == math.inf  # the leader pulls away
    assert time_to_collision(30.0, 20.0, 20.0) == math.inf  # not closing in
    assert time_to_collision(0.0, 20.0, 25.0) == 0.0  # bumpers touch
    assert time_to_collision(-1.0, 20.0, 25.0) == 0.0


def test_ttc_compliance_threshold_is_three_seconds() -> None:
    assert not ttc_compliant(14.0, 25.0, 20.0)  # 2.8 s
    assert ttc_compliant(15.0, 25.0, 20.0)  # exactly 3 s complies
    assert ttc_compliant(None, 30.0, 0.0)
    assert ttc_compliant(10.0, 25.0, 20.0, threshold=2.0)


def test_comfort_by_hand() -> None:
    # accelerations 0, 4, 4, 0 m/s² and jerks 0, 4, 0, -4 m/s³: all at the bounds, all comfortable.
    assert comfort_flags([20, 20, 24, 28, 28], dt=1.0) == [True, True, True, True]
    # +5 m/s in a second: 5 m/s² (and 5 m/s³); then 0 m/s² but a jerk of -5 m/s³.
    assert comfort_flags([20, 25, 25], dt=1.0) == [False, False]
    # At 2 Hz: +1 m/s per step is 2 m/s²; the first step's jerk is (2 - 0) / 0.5 = 4 m/s³.
    assert comfort_flags([20, 21, 22], dt=0.5) == [True, True]
    # +1.5 m/s in 0.5 s: 3 m/s² is fine, but the jerk is 6 m/s³.
    assert comfort_flags([20, 21.5], dt=0.5) == [False]
    # Braking counts the same as accelerating.
    assert comfort_flags([25, 20], dt=1.0) == [False]
    assert comfort_flags([25], dt=1.0) == []
    with pytest.raises(ValueError, match="dt"):
        comfort_flags([1, 2], dt=0.0)


def test_ego_progress_by_hand() -> None:
    assert ego_progress(150.0, 30.0, 10.0) == pytest.approx(0.5)
    assert ego_progress(300.0, 30.0, 10.0) == 1.0
    assert ego_progress(400.0, 30.0, 10.0) == 1.0  # clipped
    assert ego_progress(-5.0, 30.0, 10.0) == 0.0  # backwards is no progress
    assert ego_progress(10.0, 30.0, 0.0) == 0.0


def test_fraction() -> None:
    assert fraction([True, False, True, True]) == 0.75
    assert fraction([]) == 1.0


def test_episode_metrics_from_info() -> None:
    assert episode_metrics(3.0, {"crashed": False}) is None
    metrics = {
        "no_collision": 1.0,
        "drivable_area_compliance": 0.5,
        "ego_progress": 0.8,
        "ttc_compliance": 0.9,
        "comfort": 1.0,
    }
    assert episode_metrics(3.0, {"ad_metrics": metrics}) == EpisodeMetrics(
        reward=3.0,
        no_collision=1.0,
        drivable_area_compliance=0.5,
        ego_progress=0.8,
        ttc_compliance=0.9,
        comfort=1.0,
    )


# ---- the factory --------------------------------------------------------------------------------
def test_highway_observation_is_flat_float32_and_in_its_space() -> None:
    env = make_env("highway-fast-v0", SHORT, seed=0)
    assert env.observation_space.shape is not None
    assert len(env.observation_space.shape) == 1
    assert env.observation_space.dtype == np.float32
    _total, _info, observations = run_episode(env, lambda _obs: IDLE, seed=1)
    for obs in observations:
        assert obs.dtype == np.float32
        assert obs.shape == env.observation_space.shape
        assert env.observation_space.contains(obs)


def test_ad_metrics_reported_at_episode_end_only() -> None:
    env = make_env("highway-fast-v0", SHORT, seed=0)
    env.reset(seed=2)
    _obs, _r, terminated, truncated, info = env.step(IDLE)
    assert not terminated
    assert not truncated
    assert "ad_metrics" not in info
    for seed in (3, 4):
        total, info, _ = run_episode(env, lambda _obs: env.action_space.sample(), seed=seed)
        metrics = info["ad_metrics"]
        assert set(metrics) == {
            "no_collision",
            "drivable_area_compliance",
            "ego_progress",
            "ttc_compliance",
            "comfort",
        }
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
        assert metrics["no_collision"] == (0.0 if info["crashed"] else 1.0)
        assert episode_metrics(total, info) is not None


def test_cruising_on_an_empty_road_scores_by_its_speed() -> None:
    # Alone at 25 m/s of a rewarded 30 m/s: progress 25/30, and nothing else to fault.
    env = make_env("highway-fast-v0", {**SHORT, "vehicles_count": 0}, seed=0)
    _total, info, _ = run_episode(env, lambda _obs: IDLE, seed=0)
    metrics = info["ad_metrics"]
    assert metrics["ego_progress"] == pytest.approx(25 / 30, abs=0.01)
    assert metrics["no_collision"] == 1.0
    assert metrics["drivable_area_compliance"] == 1.0
    assert metrics["ttc_compliance"] == 1.0
    assert metrics["comfort"] == 1.0


def test_driving_into_an_obstacle_is_a_collision() -> None:
    from highway_env.vehicle.objects import Obstacle

    env = make_env("highway-fast-v0", {**SHORT, "vehicles_count": 0}, seed=0)
    env.reset(seed=0)
    ego = env.unwrapped.vehicle  # type: ignore[attr-defined]
    road = env.unwrapped.road  # type: ignore[attr-defined]
    road.objects.append(
        Obstacle(road, ego.lane.position(ego.lane.local_coordinates(ego.position)[0] + 40, 0))
    )
    done, info, steps = False, {}, 0
    while not done:
        _obs, _r, terminated, truncated, info = env.step(FASTER)
        done, steps = terminated or truncated, steps + 1
    metrics = info["ad_metrics"]
    assert info["crashed"]
    assert steps < 8  # terminated by the crash, not the time limit
    assert metrics["no_collision"] == 0.0
    assert metrics["ttc_compliance"] < 1.0  # closing in on a standing obstacle
    assert metrics["comfort"] < 1.0  # the crash stops the ego dead
    assert episode_metrics(0.0, info) is not None


def test_dense_traffic_at_full_speed_crashes_and_scores_no_collision_zero() -> None:
    env = make_env(
        "highway-fast-v0", {"duration": 20, "vehicles_count": 40, "vehicles_density": 2}, seed=0
    )
    crashed = []
    for seed in range(4):
        _total, info, _ = run_episode(env, lambda _obs: FASTER, seed=seed)
        assert info["ad_metrics"]["no_collision"] == (0.0 if info["crashed"] else 1.0)
        crashed.append(info["crashed"])
    assert any(crashed)


def test_same_seed_same_episode() -> None:
    first = make_env("highway-fast-v0", SHORT, seed=5)
    second = make_env("highway-fast-v0", SHORT, seed=5)
    a, b = first.reset(seed=9)[0], second.reset(seed=9)[0]
    np.testing.assert_array_equal(a, b)


def test_config_is_applied() -> None:
    env = make_env("highway-fast-v0", {"lanes_count": 5, "duration": 3}, seed=0)
    assert env.unwrapped.config["lanes_count"] == 5  # type: ignore[attr-defined]
    _total, _info, observations = run_episode(env, lambda _obs: IDLE, seed=0)
    assert len(observations) == 4  # 3 s at 1 Hz, plus the first observation


def test_highway_ids_are_recognised_by_entry_point() -> None:
    assert is_highway_env("highway-fast-v0")
    assert is_highway_env("merge-v0")
    assert is_highway_env("roundabout-v0")
    assert not is_highway_env("CartPole-v1")


def test_classic_control_passes_through_unchanged() -> None:
    import gymnasium as gym

    env = make_env("CartPole-v1", {}, seed=0)
    plain = gym.make("CartPole-v1")
    assert type(env.unwrapped) is type(plain.unwrapped)
    assert env.observation_space == plain.observation_space
    wrapper: Any = env
    while hasattr(wrapper, "env"):
        assert not isinstance(wrapper, ADMetrics)
        wrapper = wrapper.env
    _obs, _r, _te, _tr, info = env.step(0)
    assert "ad_metrics" not in info
    # Settings are the env's own constructor arguments.
    assert make_env("Pendulum-v1", {"g": 9.81}, seed=0).unwrapped.g == 9.81  # type: ignore[attr-defined]


def test_unknown_id_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"^spec\.environment\.id: 'no-such-env-v0'"):
        make_env("no-such-env-v0", {}, seed=0)


def test_unknown_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^spec\.environment\.config\.lanes_cuont: "):
        make_env("highway-fast-v0", {"lanes_cuont": 3}, seed=0)
    with pytest.raises(ValueError, match=r"^spec\.environment\.config: CartPole-v1"):
        make_env("CartPole-v1", {"lanes_count": 3}, seed=0)
