"""Scripted experts that act in an environment, to record demonstrations for BC and GAIL.

- ``HighwayExpert``: a rule-based driver for highway-env's ``DiscreteMetaAction`` that reads
  the scene from ``env.unwrapped`` (ego, road, other vehicles): it keeps a safe time gap and
  time to collision to the vehicle ahead, overtakes through a clearly freer adjacent lane when
  the change is safe for the vehicles there (MOBIL-like), and returns to the right lane when
  that costs nothing;
- ``CartPoleExpert``: pushes the cart towards where the pole is falling (angle + angular
  velocity, with a little cart position and velocity to stay on the track);
- ``PendulumExpert``: energy-shaping swing-up, then PD balance near the top.

``expert_for(env_id)`` picks one. Every expert maps ``(env, obs)`` to an action of the env's
action space; ``describe()`` is what the dataset manifest records as ``expert``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

import numpy as np

# highway-env's DiscreteMetaAction (``DiscreteMetaAction.ACTIONS_ALL``).
LANE_LEFT: Final = 0
IDLE: Final = 1
LANE_RIGHT: Final = 2
FASTER: Final = 3
SLOWER: Final = 4
#: How much FASTER/SLOWER change the target speed (highway-env's default target speeds).
SPEED_STEP: Final = 5.0
_ACTION_NAMES: Final = {
    "LANE_LEFT": LANE_LEFT,
    "IDLE": IDLE,
    "LANE_RIGHT": LANE_RIGHT,
    "FASTER": FASTER,
    "SLOWER": SLOWER,
}


class Expert(Protocol):
    """Something that acts in an environment."""

    def act(self, env: Any, obs: np.ndarray) -> Any:
        """The action for the current state (``env`` is the wrapped env, ``obs`` its obs)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for the dataset manifest."""
        ...


# ---- highway-env ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaneView:
    """What the ego sees of one lane: gaps are bumper to bumper (m), None when nobody is there."""

    front_gap: float | None
    front_speed: float
    rear_gap: float | None
    rear_speed: float


def _gap_or_inf(gap: float | None) -> float:
    return math.inf if gap is None else gap


def time_gap(gap: float | None, speed: float) -> float:
    """Seconds the ego needs to cover ``gap`` at ``speed``; inf when nothing is ahead."""
    if gap is None:
        return math.inf
    return gap / max(speed, 1e-3)


def closing_time(gap: float | None, follower_speed: float, leader_speed: float) -> float:
    """Time to collision of a follower and its leader at constant speeds (inf: never)."""
    if gap is None:
        return math.inf
    if gap <= 0:
        return 0.0
    closing = follower_speed - leader_speed
    return gap / closing if closing > 0 else math.inf


@dataclass(frozen=True)
class HighwayExpertParams:
    """The driver's thresholds (seconds, metres, m/s)."""

    min_time_gap: float = 1.5  # slow down below this headway
    free_time_gap: float = 2.5  # speed up above this headway
    min_ttc: float = 5.0  # slow down when reaching the leader sooner than this
    horizon: float = 4.0  # seconds ahead at which lanes are compared
    lookahead: float = 100.0  # metres of free road that count as an empty lane
    overtake_margin: float = 15.0  # metres a lane must win by to change into it
    change_front_time_gap: float = 1.2  # headway needed in the target lane
    change_front_ttc: float = 6.0
    change_rear_gap: float = 8.0  # metres needed behind, in the target lane
    change_rear_ttc: float = 4.0  # follower's time to reach the ego in the target lane
    top_speed: float = 30.0


class HighwayExpert:
    """Rule-based driver for highway-env's DiscreteMetaAction (see the module docstring)."""

    def __init__(self, params: HighwayExpertParams | None = None) -> None:
        self.params = params or HighwayExpertParams()

    def describe(self) -> dict[str, Any]:
        """Name and thresholds."""
        return {"name": "HighwayExpert", "params": asdict(self.params)}

    # -- perception ------------------------------------------------------------------------
    @staticmethod
    def lane_view(ego: Any, road: Any, lane_index: Any) -> LaneView:
        """Nearest vehicles ahead and behind the ego in ``lane_index``.

        A vehicle counts in a lane when it is on it or heading into it (a lane change in
        progress), so cut-ins are seen before they finish.
        """
        lane = road.network.get_lane(lane_index)
        s_ego = lane.local_coordinates(ego.position)[0]
        front: tuple[float, Any] | None = None
        rear: tuple[float, Any] | None = None
        for v in road.vehicles:
            if v is ego:
                continue
            s, lat = lane.local_coordinates(v.position)
            in_lane = (
                lane.on_lane(v.position, s, lat, margin=1)
                or getattr(v, "lane_index", None) == lane_index
                or getattr(v, "target_lane_index", None) == lane_index
            )
            if not in_lane or abs(s - s_ego) > 200:
                continue
            gap = abs(s - s_ego) - (ego.LENGTH + v.LENGTH) / 2
            if s >= s_ego:
                if front is None or gap < front[0]:
                    front = (gap, v)
            elif rear is None or gap < rear[0]:
                rear = (gap, v)
        return LaneView(
            front_gap=front[0] if front else None,
            front_speed=float(front[1].speed) if front else 0.0,
            rear_gap=rear[0] if rear else None,
            rear_speed=float(rear[1].speed) if rear else 0.0,
        )

    # -- decisions (pure) --------------------------------------------------------------------
    def lane_room(self, view: LaneView) -> float:
        """Free road (m) ahead in a lane after ``horizon`` s at top speed, capped at lookahead."""
        p = self.params
        if view.front_gap is None:
            return p.lookahead
        projected = view.front_gap + (view.front_speed - p.top_speed) * p.horizon
        return min(p.lookahead, projected)

    def safe_to_enter(self, view: LaneView, speed: float) -> bool:
        """Whether moving into a lane leaves room ahead and behind (MOBIL's safety criterion)."""
        p = self.params
        if view.front_gap is not None and (
            time_gap(view.front_gap, speed) < p.change_front_time_gap
            or closing_time(view.front_gap, speed, view.front_speed) < p.change_front_ttc
        ):
            return False
        return self.rear_clear(view, speed)

    def rear_clear(self, view: LaneView, speed: float) -> bool:
        """Whether the follower in a lane would have room if the ego moved in front of it."""
        p = self.params
        return view.rear_gap is None or (
            view.rear_gap >= max(p.change_rear_gap, 0.5 * view.rear_speed)
            and closing_time(view.rear_gap, view.rear_speed, speed) >= p.change_rear_ttc
        )

    def longitudinal(self, view: LaneView, speed: float, at_top: bool) -> int:
        """SLOWER, IDLE or FASTER for the vehicle ahead in ``view``."""
        p = self.params
        headway = time_gap(view.front_gap, speed)
        ttc = closing_time(view.front_gap, speed, view.front_speed)
        if headway < p.min_time_gap or ttc < p.min_ttc:
            return SLOWER
        if at_top:
            return IDLE
        # Speeding up by one step must not bring the leader within the TTC margin.
        faster_ttc = closing_time(view.front_gap, speed + SPEED_STEP, view.front_speed)
        if headway > p.free_time_gap and faster_ttc >= p.min_ttc:
            return FASTER
        return IDLE

    def choose(
        self,
        current: LaneView,
        left: LaneView | None,
        right: LaneView | None,
        speed: float,
        speed_range: tuple[bool, bool],
        changing: bool,
    ) -> int:
        """The action, from what the ego sees of its lane and the adjacent ones.

        ``speed_range`` says whether the ego is at its (lowest, highest) target speed.
        """
        p = self.params
        at_bottom, at_top = speed_range
        action = self.longitudinal(current, speed, at_top)
        if changing:
            return action
        room = self.lane_room(current)
        sides = [
            (view, name)
            for view, name in ((left, LANE_LEFT), (right, LANE_RIGHT))
            if view is not None
        ]
        safe = [
            (self.lane_room(view), name) for view, name in sides if self.safe_to_enter(view, speed)
        ]
        # Keep right whenever the right lane is (nearly) as free as this one.
        for side_room, name in safe:
            if name == LANE_RIGHT and side_room >= room - 1.0:
                return LANE_RIGHT
        if safe and (action == SLOWER or room < p.lookahead):
            best_room, best = max(safe)
            if best_room >= room + p.overtake_margin:
                return best
        if action == SLOWER and at_bottom:
            # Braking can do no more: the only way out is a lane nobody is about to fill.
            escapes = [
                (self.lane_room(view), name)
                for view, name in sides
                if self.rear_clear(view, speed) and _gap_or_inf(view.front_gap) > 2.0
            ]
            if escapes:
                return max(escapes)[1]
        return action

    # -- acting ----------------------------------------------------------------------------
    def act(self, env: Any, obs: np.ndarray) -> int:
        """One DiscreteMetaAction index for the ego of ``env`` (highway-env)."""
        unwrapped = env.unwrapped
        actions = getattr(unwrapped.action_type, "actions_indexes", None)
        if actions != _ACTION_NAMES:
            raise ValueError(
                "HighwayExpert needs the full DiscreteMetaAction "
                f"(spec.environment.config.action), the env has {actions}"
            )
        ego = unwrapped.vehicle
        road = unwrapped.road
        network = road.network
        target = ego.target_lane_index
        _from, _to, lane_id = target
        lanes = len(network.graph[_from][_to])
        speeds = getattr(ego, "target_speeds", np.array([self.params.top_speed]))
        index = int(getattr(ego, "speed_index", 0))
        speed_range = (index <= 0, index >= len(speeds) - 1)
        current = self.lane_view(ego, road, target)
        if ego.lane_index != target:
            # Mid-change: mind the vehicles of the lane being left, too.
            left_behind = self.lane_view(ego, road, ego.lane_index)
            if _gap_or_inf(left_behind.front_gap) < _gap_or_inf(current.front_gap):
                current = LaneView(
                    left_behind.front_gap,
                    left_behind.front_speed,
                    current.rear_gap,
                    current.rear_speed,
                )
        left = self.lane_view(ego, road, (_from, _to, lane_id - 1)) if lane_id > 0 else None
        right = (
            self.lane_view(ego, road, (_from, _to, lane_id + 1)) if lane_id < lanes - 1 else None
        )
        return self.choose(
            current, left, right, float(ego.speed), speed_range, ego.lane_index != target
        )


# ---- classic control --------------------------------------------------------------------------
class CartPoleExpert:
    """Push towards where the pole falls; the small cart terms keep it on the track."""

    #: Weights of (x, x', theta, theta'): the pole dominates, the cart only drifts back.
    GAINS: Final = (0.05, 0.1, 1.0, 0.5)

    def describe(self) -> dict[str, Any]:
        """Name and gains."""
        return {"name": "CartPoleExpert", "gains": list(self.GAINS)}

    def act(self, env: Any, obs: np.ndarray) -> int:
        """1 (push right) when the weighted state leans right, else 0."""
        lean = sum(g * float(v) for g, v in zip(self.GAINS, obs, strict=True))
        return int(lean > 0)


class PendulumExpert:
    """Pump energy until the pendulum swings up, then balance it with a PD law."""

    #: Pendulum-v1: theta'' = 3g/(2l) sin(theta) + 3/(m l^2) u with g=10, m=l=1.
    GRAVITY_TERM: Final = 15.0
    MAX_TORQUE: Final = 2.0
    KP: Final = 10.0
    KD: Final = 2.0
    ENERGY_GAIN: Final = 1.0
    #: Balance once within ~32 degrees of the top and not spinning past it.
    BALANCE_COS: Final = 0.85
    BALANCE_MAX_SPEED: Final = 4.0

    def describe(self) -> dict[str, Any]:
        """Name and gains."""
        return {
            "name": "PendulumExpert",
            "kp": self.KP,
            "kd": self.KD,
            "energy_gain": self.ENERGY_GAIN,
        }

    def act(self, env: Any, obs: np.ndarray) -> np.ndarray:
        """A torque in [-2, 2] (shape (1,))."""
        cos_t, sin_t, theta_dot = (float(v) for v in obs)
        theta = math.atan2(sin_t, cos_t)  # 0 is upright
        if cos_t > self.BALANCE_COS and abs(theta_dot) < self.BALANCE_MAX_SPEED:
            torque = -self.KP * theta - self.KD * theta_dot
        else:
            # E = theta'^2/2 + 15 cos(theta) is 15 at rest on top and dE/dt = 3 u theta', so
            # torque along the swing adds the missing energy (and brakes an excess).
            energy = 0.5 * theta_dot**2 + self.GRAVITY_TERM * cos_t
            direction = 1.0 if theta_dot >= 0 else -1.0
            torque = self.ENERGY_GAIN * (self.GRAVITY_TERM - energy) * direction
        return np.array([np.clip(torque, -self.MAX_TORQUE, self.MAX_TORQUE)], dtype=np.float32)


def expert_for(env_id: str) -> Expert:
    """The expert for ``env_id``; ValueError naming the id when there is none."""
    if env_id.startswith("highway"):
        # Tuned on the straight multi-lane highway; merge ramps and roundabouts need more.
        return HighwayExpert()
    if env_id.startswith("CartPole-"):
        return CartPoleExpert()
    if env_id.startswith("Pendulum-"):
        return PendulumExpert()
    raise ValueError(
        f"spec.environment.id: no expert for {env_id!r} "
        "(experts exist for highway-*, CartPole-*, Pendulum-*)"
    )
