"""The trainer's metrics use the contract's names and pass promtool's checks."""

from __future__ import annotations

import subprocess

from prometheus_client import generate_latest

from kexp.api import contract
from kexp.dev import toolchain
from kexp_trainers.runtime.metrics import TrainerMetrics


def test_trainer_metrics_have_contract_names_and_pass_promtool() -> None:
    m = TrainerMetrics("ppo-lr-high", "research")
    m.steps.inc(2048)
    m.steps_per_second.set(812.5)
    m.episode_reward.set(21.0)
    m.loss("policy", 0.02)
    m.eval_score("pdm_score", 0.81)
    m.checkpoint_upload_seconds.observe(0.4)
    text = generate_latest(m.registry).decode()
    assert (
        f'{contract.METRIC_STEPS}{{experiment="ppo-lr-high",namespace="research",trial=""}} '
        "2048.0" in text
    )
    assert 'loss="policy"' in text
    assert 'metric="pdm_score"' in text
    promtool = toolchain.ensure_tools(["promtool"]).path("promtool")
    check = subprocess.run(
        [str(promtool), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
