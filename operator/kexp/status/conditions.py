"""Kubernetes-style conditions: set one without losing when it last changed."""

from __future__ import annotations

from typing import Any


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``type_`` set; ``lastTransitionTime`` moves only on a flip."""
    value = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(cond)
            continue
        found = True
        changed = cond.get("status") != value
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now if changed else cond.get("lastTransitionTime", now),
                **({"observedGeneration": generation} if generation is not None else {}),
            }
        )
    if not found:
        out.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "lastTransitionTime": now,
                **({"observedGeneration": generation} if generation is not None else {}),
            }
        )
    return out


def condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    """The condition of that type, if present."""
    return next((c for c in conditions if c.get("type") == type_), None)
