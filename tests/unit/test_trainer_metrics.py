"""The trainer's metrics use the contract's names and pass promtool's checks."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.request

from prometheus_client import CollectorRegistry, generate_latest

from kexp.api import contract
from kexp.dev import toolchain
from kexp_trainers.runtime.metrics import UNKNOWN_INTERVAL_S, ScrapeWatch, TrainerMetrics


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_trainer_nobody_scrapes_does_not_wait_at_exit() -> None:
    watch = ScrapeWatch(CollectorRegistry())
    started = time.monotonic()
    assert watch.wait_for_next() is False
    assert time.monotonic() - started < 0.5


def test_the_wait_is_one_and_a_half_scrape_intervals_as_last_seen_at_most_the_cap() -> None:
    ticks = iter([10.0, 14.0, 20.0])
    registry = CollectorRegistry()
    watch = ScrapeWatch(registry, clock=lambda: next(ticks))
    generate_latest(registry)
    assert watch.wait_timeout() == 1.0 + UNKNOWN_INTERVAL_S * 1.5  # one scrape: interval unknown
    generate_latest(registry)
    assert watch.wait_timeout() == 1.5 * 4.0 + 1.0
    generate_latest(registry)  # the last two scrapes count
    assert watch.wait_timeout() == 1.5 * 6.0 + 1.0
    assert watch.wait_timeout(max_s=5.0) == 5.0


def test_the_final_scores_are_in_the_scrape_the_trainer_waits_for() -> None:
    m = TrainerMetrics("final", "research")
    port = _free_port()
    m.serve(port, addr="127.0.0.1")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    scrape()
    scrape()  # scraped every few milliseconds: the wait is short
    m.eval_score("pdm_score", 0.875)  # the final evaluation, just before exit
    seen: list[str] = []
    later = threading.Timer(0.2, lambda: seen.append(scrape()))
    later.start()
    assert m.await_final_scrape() is True
    later.join()
    assert (
        f'{contract.METRIC_EVAL_SCORE}{{experiment="final",metric="pdm_score",'
        'namespace="research",trial=""} 0.875' in seen[0]
    )
    # Nobody scrapes any more: the next wait gives up after 1.5 intervals, not the cap.
    started = time.monotonic()
    assert m.await_final_scrape() is False
    assert time.monotonic() - started < 5.0
