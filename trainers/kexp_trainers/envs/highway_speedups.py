"""A faster highway-env that drives exactly the same: same observations, rewards and
trajectories, bit for bit.

A profile of ``highway-fast-v0`` (cProfile, 300 random steps, highway-env 1.12) puts most of
a step in three places that do the same work many times over:

- ``Road.neighbour_vehicles``, which every vehicle's IDM and MOBIL models call several times
  per simulation step and which projects *every* vehicle on the lane each time (about 30% of
  a step). During ``Road.act`` no vehicle moves, so each lane's projection of the traffic is
  the same for every call: it is computed once per lane per ``Road.act`` and the call scans
  that list, in the original order and with the original comparisons (so ties resolve the
  same way). Outside ``Road.act`` (rewards, observations, our own metrics) nothing is cached.
- ``np.clip`` on Python scalars in the vehicle models, a few microseconds of array machinery
  per call (about 15%). In ``highway_env.vehicle.{behavior,controller,kinematics}``, ``np``
  is a copy of numpy's namespace whose ``clip`` takes a float ``a`` between int/float bounds
  with three comparisons when the answer is unambiguous and anything else (ties, where numpy
  decides the sign of a zero; NaN; arrays) goes to numpy.
- ``KinematicObservation.observe``, which builds, normalises, clips and pads a pandas
  DataFrame of a handful of numbers per step (about 35%). The fast path fills a float64 array
  with the same numbers and applies the same element-wise arithmetic (``utils.lmap``, then
  ``np.clip``) column by column, so the float32 observation is identical. It covers the plain
  ``KinematicObservation`` with features among ``FAST_FEATURES``; any other observation
  falls back to highway-env's own code.

What is not touched: ``StraightLane.local_coordinates`` (numpy's 2-element ``dot`` rounds as a
fused multiply-add, which Python 3.11's float arithmetic cannot reproduce exactly) and the
kinematics integration.

``tests/unit/test_highway_speedups.py`` drives the patched and the original simulator side by
side with the same seeds and actions and requires identical observations, rewards and
termination flags, and compares single observations in the edge cases (no traffic, absolute
coordinates, shuffled order, custom feature ranges). The patches are written against the
highway-env releases in ``SUPPORTED_VERSIONS``; on any other release ``set_enabled`` leaves
the simulator as it is (and says so in the log) rather than assume its internals.

The switch is process-wide (``set_enabled``): a trainer process drives one kind of env, and
``envs.highway.make_env`` turns it on unless told not to (the benchmark turns it off to time
Stable-Baselines3 on the stock simulator).
"""

from __future__ import annotations

import importlib.metadata
import logging
import types
from collections.abc import Callable
from typing import Any, Final

import numpy as np

log = logging.getLogger(__name__)

#: highway-env releases whose internals these patches replicate (checked by the tests).
SUPPORTED_VERSIONS: Final = ("1.12.",)
#: Kinematics features the fast observation computes; others take highway-env's path.
FAST_FEATURES: Final = frozenset({"presence", "x", "y", "vx", "vy", "heading", "cos_h", "sin_h"})

_state = {"enabled": False, "installed": False, "warned": False}


def _installed_version() -> str | None:
    try:
        return importlib.metadata.version("highway-env")
    except importlib.metadata.PackageNotFoundError:
        return None


def supported(version: str | None = None) -> bool:
    """Whether the installed (or the given) highway-env release is one the patches know."""
    version = version if version is not None else _installed_version()
    return version is not None and version.startswith(SUPPORTED_VERSIONS)


def enabled() -> bool:
    """Whether the fast paths are on in this process."""
    return _state["enabled"]


def set_enabled(on: bool) -> bool:
    """Turn the fast paths on or off for this process; returns whether they are on.

    On an unsupported highway-env release they stay off.
    """
    if on and not supported():
        if not _state["warned"]:
            log.warning(
                "highway-env %s is not one of %s: simulator speed-ups off",
                _installed_version() or "(not installed)",
                SUPPORTED_VERSIONS,
            )
            _state["warned"] = True
        on = False
    if on:
        _install()
    _state["enabled"] = on
    return on


# ---- the patches ------------------------------------------------------------------------------
def _install() -> None:
    """Wrap highway-env's hot spots once; each wrapper defers to the original while disabled."""
    if _state["installed"]:
        return
    from highway_env.envs.common import observation
    from highway_env.road import road
    from highway_env.vehicle import behavior, controller, kinematics

    road.Road.act = _fast_act(road.Road.act)  # type: ignore[method-assign]
    road.Road.neighbour_vehicles = _fast_neighbours(  # type: ignore[method-assign]
        road.Road.neighbour_vehicles
    )
    kinematic = observation.KinematicObservation
    kinematic.observe = _fast_observe(kinematic.observe)  # type: ignore[method-assign]
    fast_np = _numpy_with_scalar_clip()
    for module in (behavior, controller, kinematics):
        module.np = fast_np  # type: ignore[attr-defined]
    _state["installed"] = True


def _fast_act(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def act(self: Any) -> None:
        # Vehicles decide in act and move only in step: lane projections hold for the whole act.
        self._kexp_lane_traffic = {} if _state["enabled"] else None
        try:
            original(self)
        finally:
            self._kexp_lane_traffic = None

    return act


def _lane_traffic(road: Any, lane: Any, cache: dict[Any, list[tuple[float, Any]]]) -> Any:
    """(longitudinal coordinate, object) of everything on ``lane``, in the road's order."""
    traffic = cache.get(lane)
    if traffic is None:
        from highway_env.vehicle.objects import Landmark

        traffic = []
        for v in road.vehicles + road.objects:
            if isinstance(v, Landmark):
                continue
            s_v, lat_v = lane.local_coordinates(v.position)
            if lane.on_lane(v.position, s_v, lat_v, margin=1):
                traffic.append((s_v, v))
        cache[lane] = traffic
    return traffic


def _fast_neighbours(original: Callable[..., Any]) -> Callable[..., Any]:
    def neighbour_vehicles(self: Any, vehicle: Any, lane_index: Any = None) -> Any:
        cache = getattr(self, "_kexp_lane_traffic", None)
        if cache is None or self.neighbour_vehicles_connected_lanes:
            return original(self, vehicle, lane_index)
        lane_index = lane_index or vehicle.lane_index
        if not lane_index:
            return None, None
        lane = self.network.get_lane(lane_index)
        s = lane.local_coordinates(vehicle.position)[0]
        s_front = s_rear = v_front = v_rear = None
        # highway-env's loop and comparisons, over the lane's traffic only
        for s_v, v in _lane_traffic(self, lane, cache):
            if v is vehicle:
                continue
            if s <= s_v and (s_front is None or s_v <= s_front):
                s_front, v_front = s_v, v
            if s_v < s and (s_rear is None or s_v > s_rear):
                s_rear, v_rear = s_v, v
        return v_front, v_rear

    return neighbour_vehicles


def _numpy_with_scalar_clip() -> types.ModuleType:
    """numpy's namespace with a ``clip`` that takes scalars without array machinery."""
    numpy_clip = np.clip
    scalars, bounds = (float, np.float64), (float, int)

    def clip(a: Any, a_min: Any, a_max: Any, *args: Any, **kwargs: Any) -> Any:
        if (
            _state["enabled"]
            and not args
            and not kwargs
            and type(a) in scalars
            and type(a_min) in bounds
            and type(a_max) in bounds
            # Strict comparisons only: ties (where numpy's choice decides the sign of a zero),
            # NaN and inverted bounds go to numpy.
            and a_min < a_max
        ):
            if a_min < a < a_max:
                return float(a)
            if a < a_min:
                return float(a_min)
            if a > a_max:
                return float(a_max)
        return numpy_clip(a, a_min, a_max, *args, **kwargs)

    class NumpyNamespace(types.ModuleType):
        def __getattr__(self, name: str) -> Any:  # numpy's lazily loaded submodules
            return getattr(np, name)

    namespace = NumpyNamespace("numpy")
    namespace.__dict__.update({k: v for k, v in vars(np).items() if not k.startswith("__")})
    namespace.clip = clip  # type: ignore[attr-defined]
    return namespace


def _fast_observe(original: Callable[[Any], np.ndarray]) -> Callable[[Any], np.ndarray]:
    def observe(self: Any) -> np.ndarray:
        from highway_env.envs.common.observation import KinematicObservation

        if (
            not _state["enabled"]
            or type(self) is not KinematicObservation
            or not self.env.road
            or not FAST_FEATURES.issuperset(self.features)
        ):
            return original(self)
        return _kinematics(self)

    return observe


def _row(vehicle: Any, features: list[str], origin: Any) -> list[Any]:
    """``vehicle.to_dict(origin)``'s values of ``features`` (x, y, vx, vy relative to origin)."""
    velocity = vehicle.velocity
    values = {
        "presence": 1,
        "x": vehicle.position[0],
        "y": vehicle.position[1],
        "vx": velocity[0],
        "vy": velocity[1],
    }
    if origin is not None:
        origin_velocity = origin.velocity
        values["x"] -= origin.position[0]
        values["y"] -= origin.position[1]
        values["vx"] -= origin_velocity[0]
        values["vy"] -= origin_velocity[1]
    if "heading" in features:
        values["heading"] = vehicle.heading
    if "cos_h" in features or "sin_h" in features:
        direction = vehicle.direction
        values["cos_h"], values["sin_h"] = direction[0], direction[1]
    return [values[f] for f in features]


def _kinematics(obs_type: Any) -> np.ndarray:
    """``KinematicObservation.observe`` (highway-env 1.12) on a float64 array, not pandas."""
    from highway_env import utils

    ego = obs_type.observer_vehicle
    features = list(obs_type.features)
    rows = [_row(ego, features, None)]
    close = obs_type.env.road.close_objects_to(
        ego,
        obs_type.env.PERCEPTION_DISTANCE,
        count=obs_type.vehicles_count - 1,
        see_behind=obs_type.see_behind,
        sort=obs_type.order == "sorted",
        vehicles_only=not obs_type.include_obstacles,
    )
    if close:
        origin = ego if not obs_type.absolute else None
        rows += [_row(v, features, origin) for v in close[-obs_type.vehicles_count + 1 :]]
    table = np.zeros((max(obs_type.vehicles_count, len(rows)), len(features)))
    table[: len(rows)] = rows
    if obs_type.normalize:
        if not obs_type.features_range:
            # Fills features_range as highway-env does (from the ego's lane on first use).
            obs_type.normalize_obs(_EmptyFrame())
        for feature, f_range in obs_type.features_range.items():
            if feature in features:
                col = features.index(feature)
                column = utils.lmap(table[: len(rows), col], [f_range[0], f_range[1]], [-1, 1])
                table[: len(rows), col] = np.clip(column, -1, 1) if obs_type.clip else column
    if obs_type.order == "shuffled":
        obs_type.env.np_random.shuffle(table[1:])
    result: np.ndarray = table.astype(np.float32)
    return result


class _EmptyFrame:
    """Stands in for the DataFrame when only ``normalize_obs``'s range set-up is wanted."""

    def __contains__(self, key: object) -> bool:
        return False
