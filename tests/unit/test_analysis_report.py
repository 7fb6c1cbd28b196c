"""Learning-curve diagnoses and the Markdown report of one experiment."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kexp.analysis.curves import (
    Curves,
    CurvesError,
    diagnose,
    main_curve,
    parse_metrics,
    progress_table,
)
from kexp.analysis.report import render_report


def _curves(**columns: list[float]) -> Curves:
    n = len(next(iter(columns.values())))
    return Curves(steps=[float(100 * i) for i in range(n)], columns=dict(columns))


def _rising(n: int = 30) -> list[float]:
    return [i / (n - 1) for i in range(n)]


# ---- parse_metrics ------------------------------------------------------------------------------
def test_parse_metrics_numbers_and_nan_for_blanks() -> None:
    text = "step,time,episode_reward,loss\n0,0.5,1.0,0.9\n100,1.0,,0.7\n200,1.5,3.5,\n"
    curves = parse_metrics(text)
    assert curves.steps == [0.0, 100.0, 200.0]
    assert list(curves.columns) == ["episode_reward", "loss"]  # step and time are axes
    reward = curves.columns["episode_reward"]
    assert reward[0] == 1.0
    assert math.isnan(reward[1])
    assert reward[2] == 3.5
    assert math.isnan(curves.columns["loss"][2])
    assert curves.series("episode_reward") == ([0.0, 200.0], [1.0, 3.5])


def test_parse_metrics_without_step_column() -> None:
    with pytest.raises(CurvesError) as info:
        parse_metrics("time,episode_reward\n0,1\n")
    assert "no 'step' column" in str(info.value)
    assert "['time', 'episode_reward']" in str(info.value)


def test_parse_metrics_bad_step_names_the_line() -> None:
    with pytest.raises(CurvesError, match="line 3: step is 'x'"):
        parse_metrics("step,episode_reward\n0,1\nx,2\n")


def test_main_curve_prefers_episode_reward_then_objective_then_non_loss() -> None:
    assert main_curve(_curves(loss=[1.0], pdm_score=[0.2], episode_reward=[1.0])) == (
        "episode_reward"
    )
    assert main_curve(
        _curves(loss=[1.0], custom=[0.5], collision_rate=[0.1]), "collision_rate"
    ) == ("collision_rate")
    assert main_curve(_curves(loss=[1.0], custom=[0.5])) == "custom"
    assert main_curve(_curves(loss=[1.0], episode_reward=[math.nan])) is None


# ---- diagnose -----------------------------------------------------------------------------------
def test_diagnose_rising_curve_is_still_improving() -> None:
    notes = diagnose(_curves(episode_reward=_rising()))
    assert len(notes) == 1
    assert notes[0].startswith("episode_reward was still improving at the end (+34% of its range")
    assert "more totalSteps" in notes[0]


def test_diagnose_plateau() -> None:
    values = [i / 9 for i in range(10)] + [1.0] * 20
    notes = diagnose(_curves(episode_reward=values))
    assert len(notes) == 1
    assert notes[0].startswith("episode_reward plateaued over the last third (changed +0.0%")


def test_diagnose_collapse_after_a_peak() -> None:
    values = [i / 19 for i in range(20)] + [1.0 - 0.09 * i for i in range(1, 11)]
    notes = diagnose(_curves(episode_reward=values))
    assert len(notes) == 1
    assert notes[0].startswith("episode_reward peaked at 1 and fell 90% of its range by the end")
    assert "best checkpoint" in notes[0]


def test_diagnose_noisy_curve() -> None:
    values = [0.0 if i % 2 == 0 else 1.0 for i in range(20)]
    notes = diagnose(_curves(episode_reward=values))
    noisy = [n for n in notes if "noisy" in n]
    assert len(noisy) == 1
    assert noisy[0].startswith(
        "episode_reward is noisy (mean step-to-step change 100% of its range)"
    )


def test_diagnose_smooth_curve_is_not_noisy() -> None:
    assert not any("noisy" in n for n in diagnose(_curves(episode_reward=_rising())))


def test_diagnose_loss_reaching_infinity_diverged_first() -> None:
    loss = [1.0, 0.8, 0.6] + [math.inf] + [math.nan] * 26
    notes = diagnose(_curves(loss=loss, episode_reward=_rising()))
    assert notes[0] == "loss reached infinity: training diverged; lower the learning rate."
    assert "still improving" in notes[1]


def test_diagnose_loss_blowing_up() -> None:
    loss = [1.0] * 11 + [50.0]
    notes = diagnose(_curves(loss=loss, episode_reward=_rising(12)))
    assert notes[0].startswith("loss ended at 50, over 10x its median 1:")


def test_diagnose_too_few_points() -> None:
    notes = diagnose(_curves(episode_reward=[1.0, 2.0, math.nan, 3.0, 4.0, 5.0]))
    assert notes == ["only 5 points of episode_reward: too few to judge the curve."]


def test_diagnose_flat_curve_is_not_learning() -> None:
    notes = diagnose(_curves(episode_reward=[5.0] * 12))
    assert notes == ["episode_reward never changed (5): the agent is not learning."]


def test_diagnose_without_a_curve() -> None:
    notes = diagnose(_curves(loss=[1.0] * 3))
    assert notes == ["metrics.csv has no curve to judge; log episode_reward to get advice."]


def test_diagnose_minimised_objective_falling_is_improving() -> None:
    falling = [1.0 - v for v in _rising()]
    curves = _curves(collision_rate=falling)
    as_min = diagnose(curves, "collision_rate", mode="min")
    assert len(as_min) == 1
    assert "still improving" in as_min[0]
    as_max = diagnose(curves, "collision_rate", mode="max")
    assert "peaked" in as_max[0]


# ---- progress_table -----------------------------------------------------------------------------
def test_progress_table_keeps_first_and_last_rows() -> None:
    n = 31
    curves = _curves(loss=[float(i) for i in range(n)], episode_reward=_rising(n))
    header, rows = progress_table(curves, rows=10)
    assert header == ["step", "episode_reward", "loss"]  # the learning curve comes first
    assert len(rows) == 10
    assert rows[0] == [0.0, 0.0, 0.0]
    assert rows[-1] == [3000.0, 1.0, 30.0]
    steps = [r[0] for r in rows]
    assert steps == sorted(steps)


def test_progress_table_objective_second_and_columns_limited() -> None:
    n = 12
    curves = _curves(
        loss=[1.0] * n, a=[2.0] * n, b=[3.0] * n, pdm_score=[0.5] * n, episode_reward=[4.0] * n
    )
    header, rows = progress_table(curves, columns=4, objective="pdm_score")
    assert header == ["step", "episode_reward", "pdm_score", "loss", "a"]
    assert rows[0] == [0.0, 4.0, 0.5, 1.0, 2.0]


def test_progress_table_short_run_keeps_every_row() -> None:
    # Fewer rows than asked for: every row, the last one included.
    curves = _curves(episode_reward=[1.0, 2.0, 3.0, 4.0, 5.0])
    _, rows = progress_table(curves, rows=10)
    assert [r[0] for r in rows] == [0.0, 100.0, 200.0, 300.0, 400.0]


# ---- render_report ------------------------------------------------------------------------------
SPEC: dict[str, Any] = {
    "algorithm": "ppo",
    "description": "baseline run",
    "environment": {"id": "highway-v0"},
    "hyperparameters": {"learningRate": 0.0003},
    "training": {"totalSteps": 3000, "seed": 42},
    "trainer": {"image": "ghcr.io/x/trainer:1.0"},
    "objective": {"metric": "pdm_score", "mode": "max"},
    "tags": ["lr", "baseline"],
}


def _exp(**status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": "Succeeded",
        "score": 0.81,
        "provenance": {
            "gitCommit": "abc123",
            "gitDirty": False,
            "configHash": "1234abcd",
            "pythonVersion": "3.11.9",
            "torchVersion": "2.3.0",
            "device": "cuda",
        },
        "checkpoints": {"best": "s3://b/best.pt", "bestStep": 400, "latest": "s3://b/last.pt"},
        "results": {"pdm_score": 0.81, "reward": 12.5},
    }
    return {"metadata": {"name": "ppo-1", "namespace": "team-a"}, "status": {**base, **status}}


SECTIONS = [
    "## Configuration",
    "## Progress by step",
    "## Best checkpoint",
    "## Scores",
    "## Reproducibility checklist",
    "## Recommendations",
]


def test_render_report_has_every_section_in_order() -> None:
    text = render_report(_exp(), SPEC, _curves(episode_reward=_rising()))
    assert text.startswith("# Experiment `ppo-1`\n\n> baseline run\n")
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "learningRate: 0.0003" in text
    assert "| Objective | pdm_score (max) |" in text
    assert "- best: `s3://b/best.pt` (step 400)" in text
    assert "- latest: `s3://b/last.pt`" in text
    assert "| pdm_score | 0.81 | objective |" in text
    assert "| reward | 12.5 |  |" in text
    assert "| step | episode_reward |" in text
    assert "- episode_reward was still improving" in text


def test_render_report_checklist_ticks_what_was_recorded() -> None:
    text = render_report(_exp(), SPEC, None)
    assert "- [x] code commit recorded (abc123)" in text
    assert "- [x] working tree was clean\n" in text
    assert "- [x] config hash (1234abcd)" in text
    assert "- [x] seed fixed (42)" in text
    assert "- [x] software versions recorded (python 3.11.9, torch 2.3.0, device cuda)" in text
    assert "- [x] best checkpoint stored in S3" in text
    # A tag is not a digest.
    assert "- [ ] trainer image pinned by digest (ghcr.io/x/trainer:1.0)" in text


def test_render_report_checklist_unticks_a_dirty_tree_and_no_commit() -> None:
    exp = _exp(provenance={"gitDirty": True}, checkpoints={})
    spec = {**SPEC, "training": {"totalSteps": 10}}
    text = render_report(exp, spec, None)
    assert "- [ ] code commit recorded (none: set spec.source)" in text
    assert (
        "- [ ] working tree was clean (it was dirty or unknown: commit before submitting)" in text
    )
    assert "- [ ] seed fixed (None)" in text
    assert "- [ ] best checkpoint stored in S3" in text
    assert "No checkpoint recorded." in text


def test_render_report_image_pinned_by_digest() -> None:
    image = "ghcr.io/x/trainer@sha256:" + "a" * 64
    text = render_report(_exp(provenance={"image": image}), SPEC, None)
    assert f"- [x] trainer image pinned by digest ({image})" in text


def test_render_report_failure_advice_for_oom() -> None:
    exp = _exp(phase="Failed", reason="OOMKilled", results={}, score=None)
    text = render_report(exp, SPEC, None, curves_note="metrics.csv was never written.")
    recommendations = text.split("## Recommendations", 1)[1]
    assert "- Failed (OOMKilled): the trainer ran out of memory: raise spec.resources.memory" in (
        recommendations
    )
    assert "metrics.csv was never written." in text
    assert "No scores harvested yet." in text


def test_render_report_without_advice() -> None:
    text = render_report(_exp(), SPEC, None)
    assert "No metrics.csv yet" in text
    assert text.rstrip().endswith("## Recommendations\n\n- Nothing stands out in the curves.")
