"""envs.highway_speedups drives highway-env exactly as highway-env does, only faster.

Each test runs the stock simulator and the sped-up one from the same seed with the same
actions and requires bit-identical observations, rewards and flags.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import highway_env  # noqa: F401  (registers the envs)
import numpy as np
import pytest

from kexp_trainers.envs import highway_speedups
from kexp_trainers.envs.highway import make_env

pytestmark = pytest.mark.skipif(
    not highway_speedups.supported(), reason="installed highway-env is not a supported release"
)


@pytest.fixture(autouse=True)
def _restore_switch() -> Iterator[None]:
    before = highway_speedups.enabled()
    yield
    highway_speedups.set_enabled(before)


def rollout(
    env_id: str, *, fast: bool, seed: int, steps: int, config: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """(obs, reward, terminated, truncated) of ``steps`` steps of seeded random actions."""
    highway_speedups.set_enabled(fast)
    env = gym.make(env_id, config=config or {})
    obs, _ = env.reset(seed=seed)
    actions = np.random.default_rng(seed)
    trace: list[tuple[Any, ...]] = [(obs,)]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(
            actions.integers(env.action_space.n)  # type: ignore[attr-defined]
        )
        trace.append((obs, reward, terminated, truncated, info.get("crashed")))
        if terminated or truncated:
            obs, _ = env.reset()
            trace.append((obs,))
    env.close()
    return trace


def assert_same(stock: list[tuple[Any, ...]], fast: list[tuple[Any, ...]]) -> None:
    assert len(stock) == len(fast)
    for i, (a, b) in enumerate(zip(stock, fast, strict=True)):
        assert np.array_equal(a[0], b[0]), f"observation {i} differs"
        assert a[1:] == b[1:], f"step {i}: {a[1:]} != {b[1:]}"


@pytest.mark.parametrize("seed", [0, 7])
def test_highway_fast_trajectories_are_identical(seed: int) -> None:
    stock = rollout("highway-fast-v0", fast=False, seed=seed, steps=120)
    fast = rollout("highway-fast-v0", fast=True, seed=seed, steps=120)
    assert len(stock) > 120  # at least one episode ended and reset along the way
    assert_same(stock, fast)


def test_dense_traffic_and_other_maps_are_identical() -> None:
    # highway-v0: 50 vehicles at 15 Hz; merge-v0: a merging lane and obstacles
    dense = {"vehicles_count": 50, "duration": 15}
    assert_same(
        rollout("highway-v0", fast=False, seed=3, steps=25, config=dense),
        rollout("highway-v0", fast=True, seed=3, steps=25, config=dense),
    )
    assert_same(
        rollout("merge-v0", fast=False, seed=4, steps=40),
        rollout("merge-v0", fast=True, seed=4, steps=40),
    )


@pytest.mark.parametrize(
    "observation",
    [
        {"type": "Kinematics"},
        {"type": "Kinematics", "absolute": True, "vehicles_count": 8},
        {"type": "Kinematics", "order": "shuffled", "normalize": False},
        {"type": "Kinematics", "clip": False, "features": ["presence", "x", "vx", "cos_h"]},
        {
            "type": "Kinematics",
            "features": ["x", "y", "heading", "sin_h", "presence"],
            "features_range": {"x": [-50, 50], "heading": [-1, 1]},
            "vehicles_count": 12,
        },
    ],
    ids=["default", "absolute", "shuffled-raw", "unclipped", "custom-ranges"],
)
def test_kinematics_observation_is_identical(observation: dict[str, Any]) -> None:
    # few vehicles, so that padding rows appear in the 8- and 12-vehicle observations
    config = {"observation": observation, "vehicles_count": 6}
    stock = rollout("highway-fast-v0", fast=False, seed=11, steps=15, config=config)
    fast = rollout("highway-fast-v0", fast=True, seed=11, steps=15, config=config)
    assert_same(stock, fast)
    features = observation.get("features", ["presence", "x", "y", "vx", "vy"])
    assert stock[0][0].shape == (observation.get("vehicles_count", 5), len(features))


def test_observation_with_no_traffic_is_the_padded_ego_row() -> None:
    config = {"vehicles_count": 0}
    stock = rollout("highway-fast-v0", fast=False, seed=2, steps=3, config=config)
    fast = rollout("highway-fast-v0", fast=True, seed=2, steps=3, config=config)
    assert_same(stock, fast)
    first = fast[0][0]
    assert first[0, 0] == 1
    assert not first[1:].any()


def test_other_features_take_highway_envs_own_path() -> None:
    config = {"observation": {"type": "Kinematics", "features": ["presence", "long_off"]}}
    assert_same(
        rollout("highway-fast-v0", fast=False, seed=5, steps=5, config=config),
        rollout("highway-fast-v0", fast=True, seed=5, steps=5, config=config),
    )


def test_scalar_clip_matches_numpy() -> None:
    highway_speedups.set_enabled(True)
    from highway_env.vehicle import behavior

    clip = behavior.np.clip
    assert clip is not np.clip
    rng = np.random.default_rng(0)
    values = [*rng.normal(scale=3, size=200), 1.0, -1.0, 0.0, -0.0, float("inf"), float("nan")]
    for value in values:
        for a in (float(value), np.float64(value)):
            for lo, hi in ((-1, 1), (-0.5, 2.5), (0.0, 0.0), (-0.0, 0.0), (0, 1)):
                got, want = clip(a, lo, hi), np.clip(a, lo, hi)
                assert got == want or (np.isnan(got) and np.isnan(want)), (a, lo, hi)
                assert np.signbit(got) == np.signbit(want), (a, lo, hi)  # -0.0 vs 0.0
    # arrays and integers still go to numpy
    assert np.array_equal(clip(np.array([-3.0, 3.0]), -1, 1), [-1.0, 1.0])
    assert behavior.np.linalg is np.linalg


def test_make_env_switches_the_speedups() -> None:
    make_env("highway-fast-v0", simulator_speedups=False).close()
    assert not highway_speedups.enabled()
    make_env("highway-fast-v0").close()
    assert highway_speedups.enabled()


def test_unknown_release_keeps_the_stock_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    assert highway_speedups.supported("1.12.1")
    assert not highway_speedups.supported("1.11.0")
    assert not highway_speedups.supported("2.0.0")
    monkeypatch.setattr(highway_speedups, "supported", lambda version=None: False)
    assert highway_speedups.set_enabled(True) is False
    assert not highway_speedups.enabled()
