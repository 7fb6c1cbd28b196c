"""Evaluation scores for AD planning, as the NAVSIM benchmark defines its PDM score.

Per episode: no-collision NC, drivable-area compliance DAC, ego progress EP, time-to-collision
compliance TTC and comfort C, each in [0, 1]; the episode's score is

    pdm_score = NC * DAC * (5 * EP + 5 * TTC + 2 * C) / 12

NC and DAC multiply because a collision or leaving the road voids a plan whatever else it
does; the rest is a weighted mean. A run's scores are means over its evaluation episodes
(``pdm_score`` is the mean of the episodes' scores, not the score of the means).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Final

EP_WEIGHT: Final = 5.0
TTC_WEIGHT: Final = 5.0
COMFORT_WEIGHT: Final = 2.0


@dataclass(frozen=True)
class EpisodeMetrics:
    """What one evaluation episode measured; every ratio in [0, 1]."""

    reward: float
    no_collision: float
    drivable_area_compliance: float
    ego_progress: float
    ttc_compliance: float
    comfort: float

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or math.isnan(value):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if f.name != "reward" and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be in [0, 1], got {value}")


def pdm_score(
    no_collision: float, drivable_area: float, ego_progress: float, ttc: float, comfort: float
) -> float:
    """One episode's PDM score (see the module docstring)."""
    weighted = EP_WEIGHT * ego_progress + TTC_WEIGHT * ttc + COMFORT_WEIGHT * comfort
    return no_collision * drivable_area * weighted / (EP_WEIGHT + TTC_WEIGHT + COMFORT_WEIGHT)


def aggregate(episodes: Sequence[EpisodeMetrics]) -> dict[str, float]:
    """The run's scores over its evaluation episodes, with the names results.json uses."""
    if not episodes:
        raise ValueError("no evaluation episodes to score")
    n = len(episodes)
    rewards = [e.reward for e in episodes]
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)

    def avg(values: Sequence[float]) -> float:
        return sum(values) / n

    return {
        "episodes": float(n),
        "reward": mean,
        "reward_std": std,
        "collision_rate": 1.0 - avg([e.no_collision for e in episodes]),
        "drivable_area_compliance": avg([e.drivable_area_compliance for e in episodes]),
        "ego_progress": avg([e.ego_progress for e in episodes]),
        "ttc_compliance": avg([e.ttc_compliance for e in episodes]),
        "comfort": avg([e.comfort for e in episodes]),
        "pdm_score": avg(
            [
                pdm_score(
                    e.no_collision,
                    e.drivable_area_compliance,
                    e.ego_progress,
                    e.ttc_compliance,
                    e.comfort,
                )
                for e in episodes
            ]
        ),
    }
