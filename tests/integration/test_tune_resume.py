"""A real Ray Tune sweep, killed and restored with its searcher's state older than its trials.

That is what a pod killed while Tune uploads its state can leave behind (see
``kexp_trainers.tune.resume``). Here the moment is made on purpose: the searcher's files are
copied while the first trial is the only one, the driver is killed once the second trial
runs, and the copies are put back. The restored sweep must make its remaining trials, each
under a new name, and end.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kexp_trainers.tune.resume import restored_trials
from kexp_trainers.tune.space import SIGNAL, param_space, search_algorithm
from tests.waiting import wait_until

T = TypeVar("T")
SAMPLES = 4
#: The checkout, where the subprocess imports this module from.
ROOT = Path(__file__).resolve().parents[2]
#: The files of each kind of searcher's state in Tune's experiment folder.
SEARCHER_FILES = {
    "random": ("basic-variant-state-*",),
    "tpe": ("search_gen_state-*", "searcher-state-*"),
}


def gated_trial(config: dict[str, Any]) -> None:
    """Say it started, wait until the test lets it go, report the learning rate."""
    from ray import tune

    gates = Path(config["gates"])
    trial = tune.get_context().get_trial_id()
    (gates / f"started-{trial}").touch()
    while not (gates / f"go-{trial}").exists() and not (gates / "go-all").exists():
        time.sleep(0.1)
    tune.report({SIGNAL: float(config["learningRate"])})


def drive(storage: str, gates: str, algorithm: str, restore: bool) -> None:
    """Run (or restore) a four-trial sweep, one trial at a time; the subprocess's main."""
    import ray
    from ray import tune

    sweep = {
        "searchAlgorithm": algorithm,
        "parameters": {"learningRate": {"logUniform": [1.0e-4, 1.0e-2]}},
    }
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    trainable = tune.with_resources(gated_trial, {"cpu": 1})
    if restore:
        tuner = tune.Tuner.restore(
            f"{storage}/sweep",
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={**param_space(sweep), "gates": gates},
            tune_config=tune.TuneConfig(
                search_alg=search_algorithm(sweep, 1, 1), num_samples=SAMPLES
            ),
            run_config=tune.RunConfig(name="sweep", storage_path=storage, verbose=0),
        )
    grid = tuner.fit()
    assert grid.num_errors == 0, [r.error for r in grid]


def start(storage: Path, gates: Path, algorithm: str, restore: bool) -> subprocess.Popen[bytes]:
    code = (
        "from tests.integration.test_tune_resume import drive; "
        f"drive({str(storage)!r}, {str(gates)!r}, {algorithm!r}, {restore})"
    )
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True, env=env, cwd=ROOT)


def wait_for(check: Callable[[], T | None], what: str, proc: subprocess.Popen[bytes]) -> T:
    """``wait_until``, failing at once if the sweep's driver has ended."""

    def probe() -> T | None:
        assert proc.poll() is None, f"the sweep ended (exit {proc.returncode}) before {what}"
        return check()

    return wait_until(probe, timeout_s=120, what=what)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the driver and the Ray it started (its session), as a lost pod would be."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def searcher_state(folder: Path, algorithm: str) -> dict[str, bytes] | None:
    """The searcher's files, once each is there and whole (Tune copies them in place)."""
    found: dict[str, bytes] = {}
    for pattern in SEARCHER_FILES[algorithm]:
        for path in folder.glob(pattern):
            data = path.read_bytes()
            try:
                pickle.loads(data)  # noqa: S301 (Tune state this test wrote)
            except Exception:  # a file caught half-copied: look again
                return None
            found[path.name] = data
    return found if len(found) == len(SEARCHER_FILES[algorithm]) else None


def started(gates: Path) -> list[str]:
    return [p.name.removeprefix("started-") for p in gates.glob("started-*")]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["random", "tpe"])
def test_a_sweep_restored_with_a_searcher_older_than_its_trials_ends_with_every_trial(
    algorithm: str, tmp_path: Path
) -> None:
    storage, gates = tmp_path / "storage", tmp_path / "gates"
    for folder in (storage, gates):
        folder.mkdir()
    state = storage / "sweep"

    def statuses() -> dict[str, str]:
        try:
            return {t.trial_id: t.status for t in restored_trials(state) or []}
        except ValueError:  # caught while Tune copies it into storage: look again
            return {}

    first = start(storage, gates, algorithm, restore=False)
    try:
        [one] = wait_for(lambda: started(gates) or None, "the first trial", first)
        wait_for(lambda: one in statuses(), "the first trial's state in storage", first)
        stale = wait_for(
            lambda: searcher_state(state, algorithm), "the searcher's state in storage", first
        )
        (gates / f"go-{one}").touch()
        two = wait_for(
            lambda: next((t for t in started(gates) if t != one), None), "the second trial", first
        )
        wait_for(
            lambda: statuses() == {one: "TERMINATED", two: "RUNNING"},
            "the first trial done and the second running, in storage",
            first,
        )
    finally:
        stop(first)
    for name, data in stale.items():
        (state / name).write_bytes(data)  # the searcher as it was before the second trial

    (gates / "go-all").touch()
    second = start(storage, gates, algorithm, restore=True)
    try:
        code = second.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the restored sweep hung: its searcher waited for a trial that had ended")
    finally:
        stop(second)
    assert code == 0
    final = statuses()
    assert len(final) == SAMPLES, final  # no trial made twice under one name, none missing
    assert set(final.values()) == {"TERMINATED"}
    assert {one, two} <= set(final)
