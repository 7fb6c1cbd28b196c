"""Learning curves from a run's ``metrics.csv``, and what they suggest doing next.

The diagnoses are deliberately simple, explainable rules over the main curve (a plateau, a
collapse after a peak, noisy updates, a run that was still improving when it stopped, a loss
that blew up), each with the numbers that triggered it, so a researcher can check them.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: Columns preferred as "the" learning curve, in order.
MAIN_CURVES: Final = ("episode_reward", "eval_score", "pdm_score", "reward")
_AXES: Final = ("step", "time")


@dataclass(frozen=True)
class Curves:
    """Columns of metrics.csv as numbers (NaN where a row had no value)."""

    steps: list[float]
    columns: dict[str, list[float]]

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one column, rows without a value dropped."""
        pairs = [(s, v) for s, v in zip(self.steps, self.columns[name], strict=True) if v == v]
        return [s for s, _ in pairs], [v for _, v in pairs]


class CurvesError(ValueError):
    """metrics.csv that cannot be read; the message says where."""


def parse_metrics(text: str) -> Curves:
    """metrics.csv (header ``step,time,...``) as numeric columns."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    if "step" not in header:
        raise CurvesError(f"metrics.csv has no 'step' column (columns: {header})")
    steps: list[float] = []
    columns: dict[str, list[float]] = {c: [] for c in header if c not in _AXES}
    for line, row in enumerate(reader, start=2):
        try:
            steps.append(float(row["step"]))
        except (TypeError, ValueError):
            raise CurvesError(f"metrics.csv line {line}: step is {row.get('step')!r}") from None
        for name, values in columns.items():
            cell = (row.get(name) or "").strip()
            try:
                values.append(float(cell) if cell else math.nan)
            except ValueError:
                values.append(math.nan)
    return Curves(steps=steps, columns=columns)


def main_curve(curves: Curves, objective: str | None = None) -> str | None:
    """The column a learning curve is read from: episode reward first, else the objective."""
    for name in (*MAIN_CURVES, objective):
        if name and name in curves.columns and curves.series(name)[1]:
            return name
    for name in curves.columns:
        if not name.startswith("loss") and curves.series(name)[1]:
            return name
    return None


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out: list[float] = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def diagnose(curves: Curves, objective: str | None = None, mode: str = "max") -> list[str]:
    """Recommendations drawn from the curves, most important first; empty when none apply."""
    notes: list[str] = []
    for name, values in curves.columns.items():
        finite = [v for v in values if v == v]
        if name.startswith("loss") and finite and any(math.isinf(v) for v in finite):
            notes.append(f"{name} reached infinity: training diverged; lower the learning rate.")
        elif name.startswith("loss") and len(finite) >= 10:
            typical = statistics.median(abs(v) for v in finite) or 1e-12
            if abs(finite[-1]) > 10 * typical:
                notes.append(
                    f"{name} ended at {finite[-1]:.4g}, over 10x its median {typical:.4g}: "
                    "the optimisation may be diverging; lower the learning rate or clip gradients."
                )
    main = main_curve(curves, objective)
    if main is None:
        return [*notes, "metrics.csv has no curve to judge; log episode_reward to get advice."]
    name = main
    _, raw = curves.series(name)
    if len(raw) < 8:
        return [*notes, f"only {len(raw)} points of {name}: too few to judge the curve."]
    sign = -1.0 if mode == "min" and name not in MAIN_CURVES else 1.0
    values = _smooth([sign * v for v in raw], max(1, len(raw) // 20))
    lo, hi = min(values), max(values)
    span = hi - lo
    if span <= 1e-12:
        return [*notes, f"{name} never changed ({raw[0]:.4g}): the agent is not learning."]
    third = len(values) // 3
    late_gain = (values[-1] - values[-third - 1]) / span
    peak = max(range(len(values)), key=values.__getitem__)
    drop = (values[peak] - values[-1]) / span
    jumps = [abs(b - a) for a, b in itertools.pairwise(raw)]
    noise = statistics.fmean(jumps) / span if jumps else 0.0
    if drop > 0.3 and peak < len(values) - 1:
        notes.append(
            f"{name} peaked at {sign * values[peak]:.4g} and fell {drop:.0%} of its range by the "
            "end (instability or collapse): use the best checkpoint, lower the learning rate "
            "or tighten the clipping."
        )
    elif late_gain > 0.2:
        notes.append(
            f"{name} was still improving at the end (+{late_gain:.0%} of its range over the "
            "last third): more totalSteps will likely help."
        )
    elif abs(late_gain) < 0.05:
        notes.append(
            f"{name} plateaued over the last third (changed {late_gain:+.1%} of its range): "
            "more steps will not help at these settings; stop earlier or vary learning rate, "
            "entropy or batch size."
        )
    if noise > 0.25:
        notes.append(
            f"{name} is noisy (mean step-to-step change {noise:.0%} of its range): more "
            "evaluation episodes, a larger batch or a lower learning rate would steady it."
        )
    return notes


def progress_table(
    curves: Curves, rows: int = 10, columns: int = 5, objective: str | None = None
) -> tuple[list[str], list[list[float]]]:
    """(header, rows): about ``rows`` rows spread evenly over the run, first and last kept.

    The learning curve and the objective come first, then the other columns in file order.
    """
    first = [c for c in (main_curve(curves, objective), objective) if c in curves.columns]
    names = list(dict.fromkeys([*first, *curves.columns]))[:columns]
    n = len(curves.steps)
    count = min(rows, n)
    picks = sorted({round(i * (n - 1) / max(1, count - 1)) for i in range(count)})
    table = [[curves.steps[i], *(curves.columns[c][i] for c in names)] for i in picks]
    return ["step", *names], table
