"""Trainer throughput: kexp's PPO and SAC against Stable-Baselines3's, and the instrumentation cost.

Goals (trainer issue): kexp trains at >= 1.5x SB3's environment steps per second at equal final
return, and kexp's own instrumentation (Prometheus metrics, background S3 checkpoints,
progress/metrics reports) costs <= 5% of its speed.

In one run, on one machine: CPU, one torch thread, the same seed and the same hyperparameters on
both sides (mapped explicitly by ``sb3_ppo_kwargs`` and ``sb3_sac_kwargs``):

1. PPO on CartPole-v1 and on highway-fast-v0: kexp's ``ppo.train`` on ``make_vector_env``
   (with ``PPOArgs.vector_env`` at its default, ``auto``: in-process for CartPole, one worker
   process per copy for highway-env) against SB3's ``PPO`` on a ``DummyVecEnv`` (SB3's
   ``make_vec_env`` default, in-process) of the same number of ``make_env`` copies (each in
   SB3's ``Monitor``), so both see the same (flat float32) observations. Where kexp steps its
   copies in worker processes, SB3 also runs on a ``SubprocVecEnv`` (its worker processes), a
   row of its own (``SB3_VEC_ENVS``): kexp against SB3 as it comes and SB3 at its best. SB3
   runs on highway-env's stock simulator; a reference row without a goal gives SB3 kexp's
   simulator speed-ups (``envs.highway_speedups``, bit-identical trajectories) too;
2. SAC on Pendulum-v1: kexp's ``sac.train`` (at its default ``matmul_precision``) against
   SB3's ``SAC`` as it comes (float32 matmuls), and a reference row without a goal with SB3
   at kexp's matmul precision;
3. instrumentation: ``kexp_trainers.run.train_run`` (the trainer pod's code path) training PPO
   on CartPole-v1 with a real ``TrainerMetrics``, ``CheckpointStore`` (a checkpoint every
   ``--checkpoint-every`` steps) and ``RunReporter`` against the local stack's MinIO (*on*),
   against no-op objects of the same interface and no periodic checkpoints (*off*).

Steps per second are environment steps over the wall time of training alone (``train`` /
``learn``; for 3, from ``train_run``'s start to its final checkpoint, and end to end). Every
run is then evaluated greedily for ``--episodes`` episodes with the same protocol as
``ppo.evaluate`` (seeds ``seed + 10000 + episode``). Runs alternate kexp, SB3, kexp, SB3 (on,
off, ...) ``--repeats`` times (``--slow-repeats`` for highway and SAC) and the table shows
medians; the "(CPU time)" columns repeat the comparison over CPU seconds (this process's, all
its threads, uploads included; for PPO plus its environment worker processes'), which other
load on a shared machine disturbs less. Returns count
as equal when kexp's mean is no lower than SB3's by more than
``max(5% of |SB3's mean|, 2 standard errors of the difference)``.

What cannot be matched by a hyperparameter (so equal returns are expected, not identical ones):
SB3 bootstraps truncated episodes in PPO (kexp ends them); SB3's SAC clamps the log-std to
[-20, 2] where kexp squashes it into [-5, 2], tunes log(alpha) rather than alpha, adds 1e-6
inside the log of the squashing's Jacobian (kexp's is exact), and updates the actor once per
step where kexp (CleanRL) updates it twice every second step (the same count). Both learn the
temperature from the log-probabilities of the actor step's own samples.

    .venv/bin/python -m bench.trainer_throughput            # full: about 25 minutes on 2 cores
    .venv/bin/python -m bench.trainer_throughput --quick    # smoke run: a few minutes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kexp_trainers.algorithms import ppo, sac
from kexp_trainers.algorithms.common import (
    make_vector_env,
    matmul_precision,
    resolve_vector_env,
)
from kexp_trainers.envs.highway import is_highway_env, make_env
from kexp_trainers.runtime.environment import seed_everything

GOALS = {"speedup": 1.5, "overhead": 0.05}
CPU = torch.device("cpu")

#: kexp's hyperparameters for each comparison; SB3's are mapped from these.
PPO_ARGS = ppo.PPOArgs(batch_size=128)  # as bench.learning: CartPole solved in 60k steps
SAC_ARGS = sac.SACArgs(learning_starts=1000)  # as bench.learning
PPO_ENVS = 4
#: One PPO rollout: the warm-up's budget.
ROLLOUT = PPO_ENVS * PPO_ARGS.n_steps
#: SB3's vector envs each PPO comparison runs (a row each): its default, in-process
#: ``DummyVecEnv``, and ``SubprocVecEnv`` where kexp steps its copies in worker processes, all
#: on the stock simulator; for highway-env also ``SubprocVecEnv`` given kexp's simulator
#: speed-ups (``SPEEDUPS`` suffix; ``envs.highway_speedups``), which shows how much of kexp's
#: lead is its simulator rather than its training loop.
SPEEDUPS = "+speedups"
SB3_VEC_ENVS = {
    env_id: ("DummyVecEnv", "SubprocVecEnv")
    + (("SubprocVecEnv" + SPEEDUPS,) if is_highway_env(env_id) else ())
    if resolve_vector_env(PPO_ARGS.vector_env, env_id, PPO_ENVS) == "async"
    else ("DummyVecEnv",)
    for env_id in ("CartPole-v1", "highway-fast-v0")
}


@dataclass(frozen=True)
class Budgets:
    """Environment steps of each comparison (PPO ones rounded down to whole rollouts)."""

    cartpole: int
    highway: int
    pendulum: int
    overhead: int
    checkpoint_every: int
    episodes: int


FULL = Budgets(
    cartpole=100_000,
    highway=10_240,
    pendulum=12_000,
    overhead=100_000,
    checkpoint_every=10_000,
    episodes=10,
)
QUICK = Budgets(
    cartpole=4_096,
    highway=1_024,
    pendulum=1_500,
    overhead=4_096,
    checkpoint_every=1_024,
    episodes=3,
)


# ---- the hyperparameter mapping (pure; tested in tests/unit/test_trainer_throughput_bench.py)
def ppo_steps(total: int, num_envs: int, n_steps: int) -> int:
    """``total`` rounded down to whole rollouts (at least one): what kexp's PPO trains for.

    kexp runs ``total // (num_envs * n_steps)`` updates, SB3 collects until it has ``total``
    steps; on a whole number of rollouts both take exactly the same steps.
    """
    batch = num_envs * n_steps
    return max(1, total // batch) * batch


@dataclass(frozen=True)
class AnnealedLR:
    """kexp PPO's linear learning-rate annealing as an SB3 schedule (of progress remaining).

    kexp sets ``lr * (1 - k / updates)`` before update k (counting from 0); SB3 evaluates its
    schedule before update k with ``progress_remaining = 1 - (k + 1) / updates`` (it counts the
    rollout just collected), so the schedule adds one update's worth back.
    """

    initial: float
    updates: int

    def __call__(self, progress_remaining: float) -> float:
        return self.initial * min(1.0, progress_remaining + 1.0 / self.updates)


def _hidden_layers(args: Any) -> list[int]:
    return [args.hidden, args.hidden]


def sb3_ppo_kwargs(args: ppo.PPOArgs, num_envs: int, total_steps: int) -> dict[str, Any]:
    """Keyword arguments of SB3's ``PPO`` that train like kexp's PPO with ``args``.

    ``total_steps`` must be a whole number of rollouts (``ppo_steps``). kexp's value loss is
    ``0.5 * MSE`` weighted by ``vf_coef``, SB3's is the plain MSE: SB3 gets half the
    coefficient. The network is kexp's ``Agent``: separate actor and critic MLPs of two
    ``hidden`` tanh layers, orthogonal init (gains sqrt(2), 0.01 for the policy head, 1 for
    the value head), a state-independent log-std starting at 0, Adam with eps 1e-5.
    """
    batch = num_envs * args.n_steps
    if total_steps % batch:
        raise ValueError(
            f"total_steps {total_steps} is not a whole number of rollouts ({batch} steps)"
        )
    updates = total_steps // batch
    return {
        "learning_rate": (
            AnnealedLR(args.learning_rate, updates) if args.anneal_lr else args.learning_rate
        ),
        "n_steps": args.n_steps,
        "batch_size": args.batch_size,
        "n_epochs": args.n_epochs,
        "gamma": args.gamma,
        "gae_lambda": args.gae_lambda,
        "clip_range": args.clip_range,
        "clip_range_vf": None,
        "normalize_advantage": True,  # kexp normalises each minibatch's advantages
        "ent_coef": args.ent_coef,
        "vf_coef": 0.5 * args.vf_coef,
        "max_grad_norm": args.max_grad_norm,
        "use_sde": False,
        "target_kl": None,
        "policy_kwargs": {
            "net_arch": {"pi": _hidden_layers(args), "vf": _hidden_layers(args)},
            "activation_fn": nn.Tanh,
            "ortho_init": True,
            "log_std_init": 0.0,
            "optimizer_class": torch.optim.Adam,
            "optimizer_kwargs": {"eps": 1e-5},
        },
    }


def sb3_sac_kwargs(args: sac.SACArgs) -> dict[str, Any]:
    """Keyword arguments of SB3's ``SAC`` (this module's subclass, which takes
    ``q_learning_rate``) that train like kexp's SAC with ``args``.

    One environment step, one gradient step of the critics and their targets (Polyak ``tau``)
    each; kexp's ``policy_frequency`` delayed actor updates (that many every that many steps)
    are the same count as SB3's one per step. Automatic entropy tuning from alpha 1 towards
    ``-action_dim``; two ReLU layers of ``hidden`` for the actor and each of the two critics;
    Adam with its default eps. The critics' and alpha's learning rate is ``q_learning_rate``,
    the actor's ``learning_rate``, both constant.
    """
    return {
        "learning_rate": args.learning_rate,
        "q_learning_rate": args.q_learning_rate,
        "buffer_size": args.buffer_size,
        "learning_starts": args.learning_starts,
        "batch_size": args.batch_size,
        "tau": args.tau,
        "gamma": args.gamma,
        "train_freq": 1,
        "gradient_steps": 1,
        "target_update_interval": 1,
        "ent_coef": "auto",  # starts at 1.0, as kexp's log_alpha = 0
        "target_entropy": "auto",  # -prod(action shape), as kexp
        "use_sde": False,
        "policy_kwargs": {
            "net_arch": _hidden_layers(args),
            "activation_fn": nn.ReLU,
            "n_critics": 2,
            "optimizer_class": torch.optim.Adam,
            "optimizer_kwargs": {"eps": 1e-8},
        },
    }


def kexp_hyperparameters(args: Any) -> dict[str, Any]:
    """``args`` as camelCase ``spec.hyperparameters`` (what ``train_run`` reads)."""
    return {
        "".join(w.title() if i else w for i, w in enumerate(f.name.split("_"))): getattr(
            args, f.name
        )
        for f in fields(args)
    }


def returns_equal(kexp: list[float], sb3: list[float]) -> tuple[bool, float]:
    """(kexp's mean return is no worse than SB3's, the tolerance used): see the docstring."""
    n_k, n_s = max(len(kexp), 1), max(len(sb3), 1)
    se = math.sqrt(statistics.pvariance(kexp) / n_k + statistics.pvariance(sb3) / n_s)
    tolerance = max(0.05 * abs(statistics.mean(sb3)), 2.0 * se)
    return statistics.mean(kexp) >= statistics.mean(sb3) - tolerance, tolerance


# ---- runs ------------------------------------------------------------------------------------
@dataclass
class Run:
    """One training run and its greedy evaluation."""

    side: str
    steps: int
    seconds: float
    cpu_seconds: float  # this process's CPU time (all its threads) over the same span
    returns: list[float]
    total_seconds: float | None = None  # instrumentation runs: train_run end to end
    total_cpu_seconds: float | None = None

    @property
    def sps(self) -> float:
        return self.steps / self.seconds

    @property
    def cpu_sps(self) -> float:
        """Steps per CPU second: less sensitive than wall time to other load on the machine."""
        return self.steps / self.cpu_seconds

    @property
    def mean_return(self) -> float:
        return statistics.mean(self.returns)


def _descendants_cpu() -> float:
    """CPU seconds of this process's live descendants (environment worker processes; SB3's
    forkserver ones are grandchildren), from /proc; 0 where there is no /proc."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields_ = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        pid = int(stat.parent.name)
        parents[pid], ticks[pid] = int(fields_[1]), int(fields_[11]) + int(fields_[12])
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - mine
        mine |= frontier
    return sum(ticks[pid] for pid in mine) / os.sysconf("SC_CLK_TCK")


def clock(workers: bool = False) -> tuple[float, float]:
    """(wall, CPU) seconds; CPU is this process's, plus its live descendants' with ``workers``
    (environment worker processes; not for the instrumentation runs, whose descendants
    include the local stack's MinIO)."""
    return time.perf_counter(), time.process_time() + (_descendants_cpu() if workers else 0.0)


def since(started: tuple[float, float], workers: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds since ``started`` (a ``clock(workers)``)."""
    wall, cpu = clock(workers)
    return wall - started[0], cpu - started[1]


def greedy_returns(
    policy: Callable[[np.ndarray], Any], env: Any, episodes: int, seed: int
) -> list[float]:
    """Returns of ``episodes`` greedy episodes, with ``ppo.evaluate``'s seeds."""
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + 10_000 + episode)
        done, total = False, 0.0
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = bool(terminated or truncated)
        returns.append(total)
    env.close()
    return returns


def _torch_policy(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], Any]:
    def policy(obs: np.ndarray) -> Any:
        with torch.no_grad():
            return act(torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1))[0].numpy()

    return policy


def split_vec_env(vec_env: str) -> tuple[str, bool]:
    """(SB3 vector env class name, whether kexp's simulator speed-ups are on) of a row."""
    return vec_env.removesuffix(SPEEDUPS), vec_env.endswith(SPEEDUPS)


def sb3_vec_env(
    env_id: str, num_envs: int, seed: int, config: dict[str, Any], vec_env: str = "DummyVecEnv"
) -> Any:
    """SB3's counterpart of ``make_vector_env``: ``make_env`` copies in a ``DummyVecEnv`` (in
    this process) or a ``SubprocVecEnv`` (a worker process each, SB3's default start method),
    on highway-env's stock simulator unless ``vec_env`` ends in ``SPEEDUPS``."""
    from stable_baselines3.common import vec_env as sb3_vec_envs
    from stable_baselines3.common.monitor import Monitor

    name, speedups = split_vec_env(vec_env)
    return getattr(sb3_vec_envs, name)(
        [
            lambda i=i: Monitor(make_env(env_id, config, seed + i, simulator_speedups=speedups))
            for i in range(num_envs)
        ]
    )


def kexp_ppo(env_id: str, config: dict[str, Any], steps: int, seed: int, episodes: int) -> Run:
    seed_everything(seed)
    envs = make_vector_env(env_id, PPO_ENVS, seed, config, PPO_ARGS.vector_env)
    started = clock(workers=True)
    state = ppo.train(envs, PPO_ARGS, steps, CPU)
    seconds, cpu_seconds = since(started, workers=True)
    envs.close()
    assert state.step == steps, (state.step, steps)
    returns = greedy_returns(
        _torch_policy(state.agent.greedy), make_env(env_id, config, seed), episodes, seed
    )
    return Run("kexp", steps, seconds, cpu_seconds, returns)


def sb3_ppo(
    env_id: str,
    config: dict[str, Any],
    steps: int,
    seed: int,
    episodes: int,
    vec_env: str = "DummyVecEnv",
) -> Run:
    from stable_baselines3 import PPO

    seed_everything(seed)
    venv = sb3_vec_env(env_id, PPO_ENVS, seed, config, vec_env)
    model = PPO(
        "MlpPolicy",
        venv,
        seed=seed,
        device="cpu",
        verbose=0,
        **sb3_ppo_kwargs(PPO_ARGS, PPO_ENVS, steps),
    )
    started = clock(workers=True)
    model.learn(total_timesteps=steps)
    seconds, cpu_seconds = since(started, workers=True)
    venv.close()
    assert model.num_timesteps == steps, (model.num_timesteps, steps)
    returns = greedy_returns(
        lambda obs: model.predict(obs, deterministic=True)[0],
        make_env(env_id, config, seed),
        episodes,
        seed,
    )
    return Run(
        "sb3" if vec_env == "DummyVecEnv" else f"sb3 {vec_env}",
        steps,
        seconds,
        cpu_seconds,
        returns,
    )


def kexp_sac(env_id: str, steps: int, seed: int, episodes: int) -> Run:
    seed_everything(seed)
    envs = make_vector_env(env_id, 1, seed, {})
    started = clock()
    state = sac.train(envs, SAC_ARGS, steps, CPU)
    seconds, cpu_seconds = since(started)
    envs.close()
    returns = greedy_returns(
        _torch_policy(lambda obs: state.actor.sample(obs)[2]),
        make_env(env_id, {}, seed),
        episodes,
        seed,
    )
    return Run("kexp", state.step, seconds, cpu_seconds, returns)


def _sb3_sac_class() -> type:
    """SB3's SAC with a separate learning rate for the critics and alpha (kexp's
    ``q_learning_rate``); SB3 sets one rate on all three optimisers before every update."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.utils import update_learning_rate

    class SACWithQRate(SAC):  # type: ignore[misc]
        def __init__(self, *args: Any, q_learning_rate: float, **kwargs: Any) -> None:
            self.q_learning_rate = q_learning_rate
            super().__init__(*args, **kwargs)

        def _update_learning_rate(self, optimizers: Any) -> None:
            super()._update_learning_rate(optimizers)
            # [actor, critic, alpha]: the actor keeps the schedule's rate.
            for optimizer in optimizers[1:]:
                update_learning_rate(optimizer, self.q_learning_rate)

    return SACWithQRate


def sb3_sac(env_id: str, steps: int, seed: int, episodes: int, precision: str = "highest") -> Run:
    """SB3's SAC as it comes (float32 matmuls), or at kexp's ``matmul_precision``."""
    seed_everything(seed)
    venv = sb3_vec_env(env_id, 1, seed, {})
    model = _sb3_sac_class()(
        "MlpPolicy", venv, seed=seed, device="cpu", verbose=0, **sb3_sac_kwargs(SAC_ARGS)
    )
    started = clock()
    with matmul_precision(precision):
        model.learn(total_timesteps=steps)
    seconds, cpu_seconds = since(started)
    venv.close()
    returns = greedy_returns(
        lambda obs: model.predict(obs, deterministic=True)[0],
        make_env(env_id, {}, seed),
        episodes,
        seed,
    )
    side = "sb3" if precision == "highest" else f"sb3 {precision} matmuls"
    return Run(side, model.num_timesteps, seconds, cpu_seconds, returns)


# ---- instrumentation on / off ----------------------------------------------------------------
class _Nothing:
    """A metric that records nothing (``inc``, ``set``, ``observe``)."""

    def inc(self, _amount: float = 1.0) -> None:
        return None

    def set(self, _value: float) -> None:
        return None

    def observe(self, _value: float) -> None:
        return None


class NoopMetrics:
    """``TrainerMetrics``' interface, recording nothing."""

    def __init__(self) -> None:
        self.steps = self.steps_per_second = self.episode_reward = _Nothing()
        self.checkpoint_upload_seconds = self.gpu_memory_bytes = _Nothing()

    def loss(self, _name: str, _value: float) -> None:
        return None

    def eval_score(self, _metric: str, _value: float) -> None:
        return None


class NoopStore:
    """``CheckpointStore``'s interface: nothing to resume from, checkpoints dropped."""

    client = None
    saved_at: tuple[float, float] | None = None

    def latest(self) -> None:
        return None

    def save(self, _step: int, local_path: Path, *, best: bool = False) -> None:
        local_path.unlink(missing_ok=True)
        self.saved_at = clock()

    def uri(self, relative: str) -> str:
        return f"s3://noop/{relative}"

    def close(self) -> None:
        return None


class NoopReporter:
    """``RunReporter``'s interface: keeps the final scores, writes nothing."""

    scores: dict[str, float] | None = None

    def log(self, _step: int, _metrics: Any) -> None:
        return None

    def finish(self, scores: Any, **_kwargs: Any) -> None:
        self.scores = dict(scores)

    def fail(self, error: str, **_kwargs: Any) -> None:
        raise RuntimeError(error)


def _real_instrumentation(client: Any, bucket: str, prefix: str, total_steps: int) -> Any:
    """The real metrics, store and reporter (as ``kexp_trainers.run.main`` makes them), with
    the store stamping when the last checkpoint was queued and the reporter keeping the scores."""
    from kexp_trainers.runtime.checkpoints import CheckpointStore
    from kexp_trainers.runtime.metrics import TrainerMetrics
    from kexp_trainers.runtime.reporting import RunReporter

    class TimedStore(CheckpointStore):
        saved_at: tuple[float, float] | None = None

        def save(self, step: int, local_path: Path, *, best: bool = False) -> None:
            super().save(step, local_path, best=best)
            self.saved_at = clock()

    class KeepingReporter(RunReporter):
        scores: dict[str, float] | None = None

        def finish(self, scores: Any, **kwargs: Any) -> Any:
            self.scores = dict(scores)
            return super().finish(scores, **kwargs)

    metrics = TrainerMetrics("bench", "bench")
    store = TimedStore(
        client,
        bucket,
        prefix,
        on_upload=lambda r: metrics.checkpoint_upload_seconds.observe(r.seconds),
    )
    return metrics, store, KeepingReporter(client, bucket, prefix, total_steps)


def instrumented_ppo(
    on: bool, client: Any, bucket: str, budgets: Budgets, steps: int, seed: int
) -> Run:
    """``train_run`` of PPO on CartPole-v1 with the real instrumentation (on) or none (off)."""
    from kexp_trainers.run import train_run
    from kexp_trainers.runtime.config import RunConfig

    uid = uuid.uuid4().hex[:12]
    training: dict[str, Any] = {"totalSteps": steps, "seed": seed}
    if on:
        training["checkpointEvery"] = budgets.checkpoint_every
    spec = {
        "algorithm": "PPO",
        "environment": {"id": "CartPole-v1", "numEnvs": PPO_ENVS},
        "training": training,
        "evaluation": {"episodes": budgets.episodes},
        "hyperparameters": kexp_hyperparameters(PPO_ARGS),
    }
    config = RunConfig("bench", "bench", uid, spec, bucket, f"bench/trainer-throughput/{uid}/")
    if on:
        metrics, store, reporter = _real_instrumentation(client, bucket, config.prefix, steps)
    else:
        metrics, store, reporter = NoopMetrics(), NoopStore(), NoopReporter()
    seed_everything(seed)
    with tempfile.TemporaryDirectory(prefix="kexp-bench-run-") as tmp:
        started = clock()
        train_run(config, store, reporter, metrics, Path(tmp))
        total, total_cpu = since(started)
    assert store.saved_at is not None
    assert reporter.scores is not None
    return Run(
        "on" if on else "off",
        steps,
        store.saved_at[0] - started[0],
        store.saved_at[1] - started[1],
        [reporter.scores["reward"]],
        total_seconds=total,
        total_cpu_seconds=total_cpu,
    )


# ---- the comparisons ---------------------------------------------------------------------------
@dataclass
class Comparison:
    name: str
    a: list[Run] = field(default_factory=list)  # kexp / instrumentation on
    b: list[Run] = field(default_factory=list)  # SB3 / instrumentation off

    @staticmethod
    def median_sps(runs: list[Run]) -> float:
        return statistics.median(r.sps for r in runs)

    @staticmethod
    def returns(runs: list[Run]) -> list[float]:
        """The evaluation returns of the run with the median speed (same seed: all alike)."""
        ordered = sorted(runs, key=lambda r: r.sps)
        return ordered[(len(ordered) - 1) // 2].returns


def interleaved(
    name: str,
    repeats: int,
    a: Callable[[], Run],
    b: Callable[[], Run],
    log: Callable[[str], None],
    warmup: Callable[[], object] | None = None,
) -> Comparison:
    """A, B, A, B ... ``repeats`` times each, after an untimed ``warmup`` (first calls into
    torch, gymnasium and SB3 pay one-off costs that would otherwise fall on A's first run)."""
    return interleaved_many(name, repeats, a, [(name, b)], log, warmup)[0]


def interleaved_many(
    label: str,
    repeats: int,
    a: Callable[[], Run],
    others: list[tuple[str, Callable[[], Run]]],
    log: Callable[[str], None],
    warmup: Callable[[], object] | None = None,
) -> list[Comparison]:
    """``interleaved`` with several B sides: A, B1, B2, A, B1, B2 ...; one comparison per
    (name, B), all with the same A runs (logged under ``label``)."""
    if warmup is not None:
        warmup()
    comparisons = [Comparison(name) for name, _ in others]

    def record(name: str, i: int, result: Run) -> None:
        extra = (
            f", end to end {result.steps / result.total_seconds:.0f} steps/s"
            if result.total_seconds
            else ""
        )
        log(
            f"  {name} [{i + 1}/{repeats}] {result.side}: {result.steps} steps in "
            f"{result.seconds:.1f}s = {result.sps:.0f} steps/s ({result.cpu_sps:.0f} per CPU "
            f"second){extra}; greedy return "
            f"{result.mean_return:.1f}"
        )

    for i in range(repeats):
        result = a()
        record(label, i, result)
        for c in comparisons:
            c.a.append(result)
        for (name, run), c in zip(others, comparisons, strict=True):
            result = run()
            c.b.append(result)
            record(name, i, result)
    return comparisons


def _median(runs: list[Run], rate: Callable[[Run], float]) -> float:
    return statistics.median(rate(r) for r in runs)


def _end_to_end(r: Run) -> float:
    return r.steps / (r.total_seconds or math.inf)


def _end_to_end_cpu(r: Run) -> float:
    return r.steps / (r.total_cpu_seconds or math.inf)


def summarise_speed(c: Comparison) -> dict[str, Any]:
    """Medians of one kexp-vs-SB3 comparison, the speed-up and whether the returns are equal."""
    kexp_sps, sb3_sps = c.median_sps(c.a), c.median_sps(c.b)
    kexp_cpu, sb3_cpu = _median(c.a, lambda r: r.cpu_sps), _median(c.b, lambda r: r.cpu_sps)
    kexp_ret, sb3_ret = c.returns(c.a), c.returns(c.b)
    equal, tolerance = returns_equal(kexp_ret, sb3_ret)
    speedup = kexp_sps / sb3_sps
    return {
        "name": c.name,
        "steps": c.a[0].steps,
        "repeats": len(c.a),
        "kexp_sps": kexp_sps,
        "sb3_sps": sb3_sps,
        "speedup": speedup,
        "kexp_sps_runs": [r.sps for r in c.a],
        "sb3_sps_runs": [r.sps for r in c.b],
        "kexp_cpu_sps": kexp_cpu,
        "sb3_cpu_sps": sb3_cpu,
        "speedup_cpu": kexp_cpu / sb3_cpu,
        "kexp_return": statistics.mean(kexp_ret),
        "kexp_return_std": statistics.pstdev(kexp_ret),
        "kexp_returns_by_run": [r.mean_return for r in c.a],
        "sb3_return": statistics.mean(sb3_ret),
        "sb3_return_std": statistics.pstdev(sb3_ret),
        "sb3_returns_by_run": [r.mean_return for r in c.b],
        "return_tolerance": tolerance,
        "returns_equal": equal,
        "met": speedup >= GOALS["speedup"] and equal,
    }


def summarise_overhead(c: Comparison) -> dict[str, Any]:
    """Medians of the on/off runs and the overhead: off's speed over on's, minus one."""
    on_sps, off_sps = c.median_sps(c.a), c.median_sps(c.b)
    on_cpu, off_cpu = _median(c.a, lambda r: r.cpu_sps), _median(c.b, lambda r: r.cpu_sps)
    on_total, off_total = _median(c.a, _end_to_end), _median(c.b, _end_to_end)
    on_total_cpu, off_total_cpu = _median(c.a, _end_to_end_cpu), _median(c.b, _end_to_end_cpu)
    overhead = off_sps / on_sps - 1.0
    overhead_total = off_total / on_total - 1.0
    return {
        "name": c.name,
        "steps": c.a[0].steps,
        "repeats": len(c.a),
        "on_sps": on_sps,
        "off_sps": off_sps,
        "overhead": overhead,
        "on_sps_runs": [r.sps for r in c.a],
        "off_sps_runs": [r.sps for r in c.b],
        "on_end_to_end_sps": on_total,
        "off_end_to_end_sps": off_total,
        "overhead_end_to_end": overhead_total,
        "on_cpu_sps": on_cpu,
        "off_cpu_sps": off_cpu,
        "overhead_cpu": off_cpu / on_cpu - 1.0,
        "on_end_to_end_cpu_sps": on_total_cpu,
        "off_end_to_end_cpu_sps": off_total_cpu,
        "overhead_end_to_end_cpu": off_total_cpu / on_total_cpu - 1.0,
        "on_return": c.returns(c.a)[0],
        "off_return": c.returns(c.b)[0],
        "met": max(overhead, overhead_total) <= GOALS["overhead"],
    }


def print_table(speed: list[dict[str, Any]], overhead: dict[str, Any] | None, header: str) -> None:
    """The side-by-side table and the verdicts."""
    w = max([27] + [len(s["name"]) + 2 for s in speed])
    print(header)
    print(
        f"{'comparison':<{w}}{'steps':>7}{'kexp steps/s':>14}{'SB3 steps/s':>13}{'kexp/SB3':>10}"
        f"{'(CPU time)':>12}{'kexp return':>17}{'SB3 return':>17}  equal return?"
    )
    for s in speed:
        print(
            f"{s['name']:<{w}}{s['steps']:>7}{s['kexp_sps']:>14.0f}{s['sb3_sps']:>13.0f}"
            f"{s['speedup']:>9.2f}x{s['speedup_cpu']:>11.2f}x"
            f"{s['kexp_return']:>10.1f} ± {s['kexp_return_std']:<5.1f}"
            f"{s['sb3_return']:>10.1f} ± {s['sb3_return_std']:<5.1f}"
            f"  {'yes' if s['returns_equal'] else 'NO'} (tolerance {s['return_tolerance']:.1f})"
        )
    if overhead is not None:
        o = overhead
        print(
            f"\n{'instrumentation':<{w}}{'steps':>7}{'off steps/s':>14}{'on steps/s':>13}"
            f"{'overhead':>10}{'(CPU time)':>12}{'off return':>17}{'on return':>17}"
        )
        print(
            f"{o['name'] + ', training':<{w}}{o['steps']:>7}{o['off_sps']:>14.0f}"
            f"{o['on_sps']:>13.0f}{100 * o['overhead']:>9.1f}%{100 * o['overhead_cpu']:>11.1f}%"
            f"{o['off_return']:>17.1f}{o['on_return']:>17.1f}"
        )
        print(
            f"{o['name'] + ', end to end':<{w}}{o['steps']:>7}{o['off_end_to_end_sps']:>14.0f}"
            f"{o['on_end_to_end_sps']:>13.0f}{100 * o['overhead_end_to_end']:>9.1f}%"
            f"{100 * o['overhead_end_to_end_cpu']:>11.1f}%"
        )
    print()
    for s in speed:
        if not s.get("goal", True):
            print(f"{s['name']}: {s['speedup']:.2f}x (a reference row: no goal)")
            continue
        print(
            f"{s['name']}: {s['speedup']:.2f}x SB3's steps/s (goal >= {GOALS['speedup']}x at "
            f"equal return): {'MET' if s['met'] else 'MISSED'}"
        )
    if overhead is not None:
        print(
            f"instrumentation overhead {100 * overhead['overhead']:.1f}% training, "
            f"{100 * overhead['overhead_end_to_end']:.1f}% end to end "
            f"(goal <= {100 * GOALS['overhead']:.0f}%): "
            f"{'MET' if overhead['met'] else 'MISSED'}"
        )


COMPARISONS = ("cartpole", "highway", "pendulum", "overhead")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per side: CartPole, overhead")
    parser.add_argument("--slow-repeats", type=int, default=2, help="runs per side: highway, SAC")
    parser.add_argument("--cartpole-steps", type=int)
    parser.add_argument("--highway-steps", type=int)
    parser.add_argument("--pendulum-steps", type=int)
    parser.add_argument("--overhead-steps", type=int)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--episodes", type=int)
    parser.add_argument(
        "--only", default=",".join(COMPARISONS), help=f"comma-separated subset of {COMPARISONS}"
    )
    parser.add_argument("--port-base", type=int, default=23400)
    parser.add_argument("--state-dir", type=Path, default=None, help="reuse this local stack")
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    budgets = Budgets(
        cartpole=args.cartpole_steps or base.cartpole,
        highway=args.highway_steps or base.highway,
        pendulum=args.pendulum_steps or base.pendulum,
        overhead=args.overhead_steps or base.overhead,
        checkpoint_every=args.checkpoint_every or base.checkpoint_every,
        episodes=args.episodes or base.episodes,
    )
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(only) - set(COMPARISONS))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {COMPARISONS}")
    torch.set_num_threads(1)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    seed, episodes = args.seed, budgets.episodes
    speed: list[dict[str, Any]] = []
    wall_started = time.perf_counter()
    for env_id, key, steps_total, config in (
        ("CartPole-v1", "cartpole", budgets.cartpole, {}),
        ("highway-fast-v0", "highway", budgets.highway, {}),
    ):
        if key not in only:
            continue
        steps = ppo_steps(steps_total, PPO_ENVS, PPO_ARGS.n_steps)
        repeats = args.repeats if key == "cartpole" else args.slow_repeats
        label = f"PPO {env_id} ({PPO_ENVS} envs)"
        kexp_mode = resolve_vector_env(PPO_ARGS.vector_env, env_id, PPO_ENVS)
        vec_envs = SB3_VEC_ENVS[env_id]
        comparisons = interleaved_many(
            label,
            repeats,
            lambda e=env_id, s=steps, cf=config: kexp_ppo(e, cf, s, seed, episodes),
            [
                (
                    label if len(vec_envs) == 1 else f"{label}, kexp {kexp_mode} vs SB3 {v}",
                    lambda e=env_id, s=steps, cf=config, v=v: sb3_ppo(e, cf, s, seed, episodes, v),
                )
                for v in vec_envs
            ],
            log,
            # highway's own steps dwarf the one-off costs, which CartPole's warm-up pays anyway
            warmup=(
                lambda e=env_id, cf=config: (
                    kexp_ppo(e, cf, ROLLOUT, seed, 1),
                    sb3_ppo(e, cf, ROLLOUT, seed, 1),
                )
            )
            if key == "cartpole"
            else None,
        )
        for c, v in zip(comparisons, vec_envs, strict=True):
            speed.append(
                {
                    **summarise_speed(c),
                    "kexp_vector_env": kexp_mode,
                    "sb3_vec_env": v,
                    # a reference row: how much of kexp's lead is its simulator
                    "goal": not v.endswith(SPEEDUPS),
                }
            )
    if "pendulum" in only:
        label = "SAC Pendulum-v1 (1 env)"
        # SB3 as it comes, and (a reference row, no goal) at kexp's matmul precision
        variants = ("highest", SAC_ARGS.matmul_precision)
        comparisons = interleaved_many(
            label,
            args.slow_repeats,
            lambda: kexp_sac("Pendulum-v1", budgets.pendulum, seed, episodes),
            [
                (
                    label if p == "highest" else f"{label}, SB3 at {p} matmul precision",
                    lambda p=p: sb3_sac("Pendulum-v1", budgets.pendulum, seed, episodes, p),
                )
                for p in variants
            ],
            log,
            warmup=lambda: (
                kexp_sac("Pendulum-v1", SAC_ARGS.learning_starts + 100, seed, 1),
                sb3_sac("Pendulum-v1", SAC_ARGS.learning_starts + 100, seed, 1),
            ),
        )
        for c, p in zip(comparisons, variants, strict=True):
            speed.append({**summarise_speed(c), "goal": p == "highest"})

    overhead = None
    if "overhead" in only:
        from kexp.dev.stack import Stack
        from kexp.storage.s3 import ensure_bucket, s3_client

        tmp = tempfile.TemporaryDirectory(prefix="kexp-bench-")
        stack = Stack(args.state_dir or Path(tmp.name) / "stack")
        log(f"starting the local stack for MinIO (port base {args.port_base}) ...")
        stack.up(port_base=args.port_base, log=lambda _m: None)
        try:
            client = s3_client(stack.s3_credentials())
            bucket = "bench-trainer-throughput"
            ensure_bucket(client, bucket)
            steps = ppo_steps(budgets.overhead, PPO_ENVS, PPO_ARGS.n_steps)
            c = interleaved(
                "PPO CartPole-v1",
                args.repeats,
                lambda: instrumented_ppo(True, client, bucket, budgets, steps, seed),
                lambda: instrumented_ppo(False, client, bucket, budgets, steps, seed),
                log,
                warmup=lambda: (
                    instrumented_ppo(True, client, bucket, budgets, ROLLOUT, seed),
                    instrumented_ppo(False, client, bucket, budgets, ROLLOUT, seed),
                ),
            )
            overhead = summarise_overhead(c)
        finally:
            if args.state_dir is None:
                stack.down()
            tmp.cleanup()

    wall = time.perf_counter() - wall_started
    print_table(
        speed,
        overhead,
        f"trainer throughput: CPU, 1 torch thread, seed {seed}, medians of interleaved runs "
        f"(CartPole/overhead x{args.repeats}, highway/SAC x{args.slow_repeats}), "
        f"greedy return over {episodes} episodes; {wall / 60:.0f} min",
    )
    print(
        json.dumps(
            {
                "bench": "trainer_throughput",
                "quick": args.quick,
                "seed": seed,
                "budgets": asdict(budgets),
                "repeats": args.repeats,
                "slow_repeats": args.slow_repeats,
                "torch_threads": torch.get_num_threads(),
                "comparisons": speed,
                "overhead": overhead,
                "goals": GOALS,
                "met": {
                    **{s["name"]: s["met"] for s in speed if s.get("goal", True)},
                    **({"overhead": overhead["met"]} if overhead else {}),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
