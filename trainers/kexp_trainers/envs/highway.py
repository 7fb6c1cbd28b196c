"""Environments for the trainers: highway-env planning tasks with AD metrics, and the rest as is.

``make_env`` is the one factory: for a highway-env id (``highway-fast-v0``, ``merge-v0``,
``roundabout-v0``, ``intersection-v0`` ...) it applies ``spec.environment.config``, flattens the
observation to a 1-D float32 vector (what every policy network takes) and wraps the env in
``ADMetrics``; any other registered id (classic control) is ``gym.make(env_id)`` unchanged.

``ADMetrics`` measures the ego vehicle after every policy step and, on the step that ends an
episode (terminated or truncated), puts ``info["ad_metrics"]`` with five ratios in [0, 1], the
per-episode terms of NAVSIM's PDM score (``kexp_trainers.envs.scores``):

- ``no_collision``: 0 if the ego crashed at any step of the episode, else 1;
- ``drivable_area_compliance``: the fraction of steps with the ego on the road
  (``vehicle.on_road``: inside the lateral bounds of its lane);
- ``ego_progress``: the distance travelled along the road (each step's displacement projected
  on the direction of the lane the ego was on) divided by what driving at the env's top
  rewarded speed (``config["reward_speed_range"][1]``, else the ego's top target speed) for the
  elapsed time would cover, clipped to [0, 1];
- ``ttc_compliance``: the fraction of steps whose time to collision with the vehicle ahead in
  the ego's lane is at least ``TTC_THRESHOLD_S`` (3 s); a step with no vehicle ahead, or one
  that the ego is not closing in on, complies; bumpers touching gives a TTC of 0;
- ``comfort``: the fraction of steps with |longitudinal acceleration| <= ``MAX_ACCEL`` (4 m/s²)
  and |jerk| <= ``MAX_JERK`` (4 m/s³), both finite differences of the ego's speed over the
  policy period (the ego is taken to cruise at constant speed before the first step).

The metric arithmetic lives in small pure functions (``time_to_collision``, ``comfort_flags``,
``ego_progress``, ...) so that it is tested on hand-computed inputs without the simulator.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import gymnasium as gym
import numpy as np

from kexp_trainers.envs import highway_speedups
from kexp_trainers.envs.scores import EpisodeMetrics

TTC_THRESHOLD_S: Final = 3.0
MAX_ACCEL: Final = 4.0  # m/s²
MAX_JERK: Final = 4.0  # m/s³
#: The ``info`` key ADMetrics fills on an episode's last step.
INFO_KEY: Final = "ad_metrics"
METRIC_NAMES: Final = (
    "no_collision",
    "drivable_area_compliance",
    "ego_progress",
    "ttc_compliance",
    "comfort",
)
#: Top speed for ego progress when the env has no reward speed range nor target speeds.
FALLBACK_MAX_SPEED: Final = 30.0


# ---- pure metric arithmetic -------------------------------------------------------------------
def time_to_collision(gap: float | None, ego_speed: float, lead_speed: float) -> float:
    """Seconds until the ego reaches the vehicle ahead at constant speeds; inf if it never does.

    ``gap`` is bumper to bumper (m); None means no vehicle ahead. A gap of zero or less is a
    collision already (TTC 0).
    """
    if gap is None:
        return math.inf
    if gap <= 0.0:
        return 0.0
    closing = ego_speed - lead_speed
    if closing <= 0.0:
        return math.inf
    return gap / closing


def ttc_compliant(
    gap: float | None, ego_speed: float, lead_speed: float, threshold: float = TTC_THRESHOLD_S
) -> bool:
    """Whether one step keeps a time to collision of at least ``threshold`` seconds."""
    return time_to_collision(gap, ego_speed, lead_speed) >= threshold


def comfort_flags(
    speeds: Sequence[float],
    dt: float,
    max_accel: float = MAX_ACCEL,
    max_jerk: float = MAX_JERK,
) -> list[bool]:
    """Per step, whether acceleration and jerk stay within bounds.

    ``speeds[0]`` is the speed at reset and ``speeds[i]`` the speed after step i, ``dt`` the
    policy period (s); the result has one flag per step (``len(speeds) - 1``). Acceleration
    before the first step is taken as 0, since episodes start at constant speed.
    """
    if dt <= 0:
        raise ValueError(f"dt must be positive, got {dt}")
    flags = []
    previous_accel = 0.0
    for before, after in itertools.pairwise(speeds):
        accel = (after - before) / dt
        jerk = (accel - previous_accel) / dt
        # A small tolerance: bounds are inclusive and the speeds are floats.
        flags.append(abs(accel) <= max_accel + 1e-9 and abs(jerk) <= max_jerk + 1e-9)
        previous_accel = accel
    return flags


def ego_progress(distance: float, max_speed: float, elapsed: float) -> float:
    """Distance along the road over the distance at ``max_speed`` for ``elapsed`` s, in [0, 1]."""
    if elapsed <= 0.0 or max_speed <= 0.0:
        return 0.0
    return min(1.0, max(0.0, distance / (max_speed * elapsed)))


def fraction(flags: Sequence[bool]) -> float:
    """The share of True flags; 1.0 for no steps (nothing was violated)."""
    return sum(1 for f in flags if f) / len(flags) if flags else 1.0


def episode_metrics(total_reward: float, info: Mapping[str, Any]) -> EpisodeMetrics | None:
    """An episode's scores from its final ``info``; None when the env reports no AD metrics."""
    metrics = info.get(INFO_KEY)
    if not isinstance(metrics, Mapping):
        return None
    return EpisodeMetrics(
        reward=float(total_reward), **{name: float(metrics[name]) for name in METRIC_NAMES}
    )


# ---- the simulator side -----------------------------------------------------------------------
def _lead_gap(ego: Any, road: Any) -> tuple[float | None, float]:
    """Bumper-to-bumper gap (m) and speed of the vehicle ahead in the ego's lane."""
    lane_index = getattr(ego, "lane_index", None)
    if road is None or not lane_index:
        return None, 0.0
    front, _rear = road.neighbour_vehicles(ego, lane_index)
    if front is None:
        return None, 0.0
    centres = ego.lane_distance_to(front, ego.lane)
    return float(centres - (ego.LENGTH + front.LENGTH) / 2.0), float(front.speed)


def _max_speed(env: Any) -> float:
    config = getattr(env, "config", {}) or {}
    speed_range = config.get("reward_speed_range")
    if speed_range:
        return float(speed_range[1])
    targets = getattr(getattr(env, "vehicle", None), "target_speeds", None)
    if targets is not None and len(targets):
        return float(np.max(targets))
    return FALLBACK_MAX_SPEED


class ADMetrics(gym.Wrapper[Any, Any, Any, Any]):
    """Measures the ego vehicle of a highway-env environment; see the module docstring."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self._reset_tracking()

    def _reset_tracking(self) -> None:
        self._speeds: list[float] = []
        self._on_road: list[bool] = []
        self._ttc_ok: list[bool] = []
        self._crashed = False
        self._distance = 0.0
        self._position: np.ndarray | None = None
        self._heading = 0.0

    def _ego(self) -> Any:
        return self.env.unwrapped.vehicle  # type: ignore[attr-defined]

    def _lane_heading(self, ego: Any) -> float:
        lane = getattr(ego, "lane", None)
        if lane is None:
            return float(ego.heading)
        s, _lat = lane.local_coordinates(ego.position)
        return float(lane.heading_at(s))

    def _remember_position(self, ego: Any) -> None:
        self._position = np.array(ego.position, dtype=float)
        self._heading = self._lane_heading(ego)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Reset the env and start measuring a new episode."""
        obs, info = self.env.reset(**kwargs)
        self._reset_tracking()
        ego = self._ego()
        self._speeds.append(float(ego.speed))
        self._remember_position(ego)
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step, record the ego's state, and report ``ad_metrics`` on the episode's last step."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        ego = self._ego()
        road = self.env.unwrapped.road  # type: ignore[attr-defined]
        position = np.array(ego.position, dtype=float)
        if self._position is not None:
            # Along the lane the ego was on, so weaving between lanes is not progress.
            direction = np.array([math.cos(self._heading), math.sin(self._heading)])
            self._distance += float(np.dot(position - self._position, direction))
        self._remember_position(ego)
        self._speeds.append(float(ego.speed))
        self._crashed = self._crashed or bool(ego.crashed)
        self._on_road.append(bool(ego.on_road))
        gap, lead_speed = _lead_gap(ego, road)
        self._ttc_ok.append(ttc_compliant(gap, float(ego.speed), lead_speed))
        if terminated or truncated:
            info = {**info, INFO_KEY: self.metrics()}
        return obs, reward, terminated, truncated, info

    def metrics(self) -> dict[str, float]:
        """The five ratios over the steps taken so far in this episode."""
        unwrapped: Any = self.env.unwrapped
        frequency = float(unwrapped.config.get("policy_frequency", 1) or 1)
        steps = len(self._on_road)
        return {
            "no_collision": 0.0 if self._crashed else 1.0,
            "drivable_area_compliance": fraction(self._on_road),
            "ego_progress": ego_progress(self._distance, _max_speed(unwrapped), steps / frequency),
            "ttc_compliance": fraction(self._ttc_ok),
            "comfort": fraction(comfort_flags(self._speeds, 1.0 / frequency)),
        }


class FlatFloat32(gym.ObservationWrapper[np.ndarray, Any, Any]):
    """Any observation (Kinematics matrix, dict, image) as one 1-D float32 vector."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self._source = env.observation_space
        flat = gym.spaces.flatten_space(env.observation_space)
        if not isinstance(flat, gym.spaces.Box):
            raise ValueError(
                f"spec.environment.id: observations of {env.spec.id if env.spec else env} "
                f"({env.observation_space}) cannot be flattened to a vector"
            )
        self.observation_space = gym.spaces.Box(
            low=flat.low.astype(np.float32),
            high=flat.high.astype(np.float32),
            shape=flat.shape,
            dtype=np.float32,
        )

    def observation(self, observation: Any) -> np.ndarray:
        """The observation flattened and cast to float32."""
        return np.asarray(gym.spaces.flatten(self._source, observation), dtype=np.float32).reshape(
            -1
        )


# ---- the factory ------------------------------------------------------------------------------
def _spec(env_id: str) -> Any:
    """The registered spec of ``env_id``, importing highway_env first if needed."""
    if env_id not in gym.registry:
        with contextlib.suppress(ImportError):
            import highway_env  # noqa: F401 - importing it registers the highway-env ids
    try:
        return gym.spec(env_id)
    except gym.error.Error:
        raise ValueError(
            f"spec.environment.id: {env_id!r} is not a registered environment"
        ) from None


def is_highway_env(env_id: str) -> bool:
    """Whether ``env_id`` is one of highway-env's (by the module of its entry point)."""
    entry = _spec(env_id).entry_point
    module = entry.split(":", 1)[0] if isinstance(entry, str) else getattr(entry, "__module__", "")
    return bool(module) and module.split(".", 1)[0] == "highway_env"


def _check_config_keys(env_id: str, env: Any, config: Mapping[str, Any]) -> None:
    """Refuse a setting the env does not have, so a typo never runs with a silent default."""
    known = set(type(env).default_config())
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"spec.environment.config.{unknown[0]}: not a setting of {env_id} "
            f"(known: {', '.join(sorted(known))})"
        )


def make_env(
    env_id: str,
    config: Mapping[str, Any] | None = None,
    seed: int = 0,
    *,
    simulator_speedups: bool = True,
) -> gym.Env[Any, Any]:
    """The environment every algorithm, the evaluation and the dataset command use.

    highway-env ids get ``config`` (``spec.environment.config``, highway-env's own settings),
    a flat float32 observation and ``ADMetrics``; other ids are ``gym.make(env_id, **config)``
    (so an empty config gives the plain env). The env is reset once with ``seed`` and its
    action space seeded, so later unseeded resets continue one reproducible stream.

    ``simulator_speedups`` switches ``envs.highway_speedups`` (the same trajectories, bit for
    bit, in less time) on or off for this process when ``env_id`` is a highway-env id.

    Raises ValueError naming ``spec.environment.id`` for an unknown id, and
    ``spec.environment.config`` for settings the env does not take.
    """
    config = dict(config or {})
    spec = _spec(env_id)
    env: gym.Env[Any, Any]
    if is_highway_env(env_id):
        highway_speedups.set_enabled(simulator_speedups)
        env = gym.make(spec, config=config)
        _check_config_keys(env_id, env.unwrapped, config)
        env = ADMetrics(FlatFloat32(env))
    else:
        try:
            env = gym.make(spec, **config)
        except TypeError:
            raise ValueError(
                f"spec.environment.config: {env_id} takes no settings {sorted(config)}"
            ) from None
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env
