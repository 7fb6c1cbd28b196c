"""Side-by-side comparison of experiments: what differs in their configuration, and results.

Like a run comparer: rows are settings and scores, columns are experiments. Settings every
experiment shares are hidden unless asked for, so the table shows what was actually varied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kexp.analysis.records import GROUPS

#: Record columns that describe identity or timing rather than configuration or outcome.
_NOT_COMPARED: Final = frozenset(
    {"namespace", "name", "uid", "created", "started", "completed", "description"}
)
_OUTCOME: Final = (
    "phase",
    "reason",
    "score",
    "step",
    "duration_s",
    "best_checkpoint",
    "best_step",
    "latest_checkpoint",
    "init_from_checkpoint",
)


#: Groups of record columns that are outcomes: harvested scores, a sweep's trial counts.
_OUTCOME_GROUPS: Final = ("result.", "trials.")


@dataclass(frozen=True)
class Comparison:
    """Rows of (label, values in experiment order); which rows are settings that differ."""

    names: list[str]
    settings: list[tuple[str, list[Any]]]
    results: list[tuple[str, list[Any]]]
    same: int  # settings hidden because every experiment has the same value


def _differs(values: Sequence[Any]) -> bool:
    return len({repr(v) for v in values}) > 1


def compare(records: Sequence[Mapping[str, Any]], *, show_all: bool = False) -> Comparison:
    """Compare flat records (``kexp.analysis.records.record``) of two or more experiments."""
    keys: list[str] = []
    for rec in records:
        keys += [k for k in rec if k not in keys]
    config = [
        k
        for k in keys
        if k not in _NOT_COMPARED and k not in _OUTCOME and not k.startswith(_OUTCOME_GROUPS)
    ]

    def order(key: str) -> tuple[int, str]:
        for i, group in enumerate(GROUPS):
            if key.startswith(group):
                return (i + 1, key)
        return (0, "")  # head columns keep their record order

    config.sort(key=order)
    settings: list[tuple[str, list[Any]]] = []
    same = 0
    for key in config:
        values = [rec.get(key) for rec in records]
        if show_all or _differs(values):
            settings.append((key, values))
        else:
            same += 1
    result_keys = [k for k in _OUTCOME if any(rec.get(k) is not None for rec in records)]
    for group in _OUTCOME_GROUPS:
        result_keys += sorted({k for rec in records for k in rec if k.startswith(group)})
    results = [(key, [rec.get(key) for rec in records]) for key in result_keys]
    names = [str(rec.get("name")) for rec in records]
    return Comparison(names=names, settings=settings, results=results, same=same)


def best_index(records: Sequence[Mapping[str, Any]]) -> int | None:
    """Which experiment scored best by its objective (None when none has a score)."""
    scored = [
        (i, float(rec["score"]), rec.get("mode"))
        for i, rec in enumerate(records)
        if isinstance(rec.get("score"), int | float)
    ]
    if not scored:
        return None
    if all(mode == "min" for _, _, mode in scored):
        return min(scored, key=lambda t: t[1])[0]
    return max(scored, key=lambda t: t[1])[0]
