"""What the algorithms truly share: GAE, the PPO and imitation loss terms, Adam, environments.

The math functions here are pure array code, tested against hand-computed values.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

T = TypeVar("T")


def args_from_hyperparameters(cls: type[T], hp: Mapping[str, Any], algorithm: str) -> T:
    """An algorithm's args dataclass from camelCase spec.hyperparameters.

    Unknown keys are refused naming the field, so a typo never trains with a silent default.
    """
    defaults = cls()
    camel = {
        "".join(w.title() if i else w for i, w in enumerate(f.name.split("_"))): f.name
        for f in fields(cls)  # type: ignore[arg-type]
    }
    values: dict[str, Any] = {}
    for key, value in hp.items():
        name = camel.get(key)
        if name is None:
            raise ValueError(
                f"spec.hyperparameters.{key}: not a {algorithm} hyperparameter "
                f"(known: {', '.join(sorted(camel))})"
            )
        values[name] = type(getattr(defaults, name))(value)
    return cls(**values)


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    dones: np.ndarray,
    next_value: np.ndarray,
    next_done: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and returns for a [T, N] rollout (numpy arrays).

    ``dones[t]`` says that the observation at step t began a new episode (CleanRL's
    convention), so step t-1's bootstrap is cut there; ``next_value``/``next_done`` describe
    the observation after the last step. Rollouts live in numpy (see ``ppo.train``): the
    T-step recursion is many tiny operations, which numpy does with far less overhead than
    torch.
    """
    nonterminal = 1.0 - np.concatenate([dones[1:], next_done[None]])
    following = np.concatenate([values[1:], next_value[None]])
    deltas = rewards + gamma * following * nonterminal - values
    decay = gamma * lam * nonterminal
    advantages = np.empty_like(deltas)
    last = np.zeros_like(deltas[0])
    for t in range(len(deltas) - 1, -1, -1):
        last = deltas[t] + decay[t] * last
        advantages[t] = last
    return advantages, advantages + values


def clipped_policy_loss(
    new_logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, clip: float
) -> torch.Tensor:
    """PPO's clipped surrogate objective, as a loss to minimise."""
    ratio = (new_logprob - old_logprob).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    return torch.max(unclipped, clipped).mean()


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Half the mean squared error of the value estimates."""
    return 0.5 * ((values - returns) ** 2).mean()


def bc_loss(policy_out: torch.Tensor, actions: torch.Tensor, discrete: bool) -> torch.Tensor:
    """Behaviour cloning loss of the actor's output against the expert's actions.

    Discrete actions: cross-entropy of the logits against the expert's action index (the
    negative log-likelihood of the categorical policy). Continuous actions: mean squared error
    of the Gaussian's mean against the expert's action, averaged over samples and dimensions;
    the standard deviation is left to RL, which needs it to explore.
    """
    if discrete:
        return F.cross_entropy(policy_out, actions.long().reshape(-1))
    return F.mse_loss(policy_out, actions.reshape(policy_out.shape))


def adam(params: Iterable[torch.Tensor], **kwargs: Any) -> torch.optim.Adam:
    """``torch.optim.Adam`` with its fused kernel (one kernel for all parameters, CPU included
    since torch 2.4), else its multi-tensor (foreach) path: the same arithmetic, less
    per-parameter Python and dispatch overhead than the default per-tensor loop."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except RuntimeError:  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, foreach=True, **kwargs)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat subnormal floats (below 1.2e-38) as zero on this thread while inside (also a
    function decorator); torch's default (off) again on the way out.

    Adam's running mean of a weight whose gradient stays zero (a dead ReLU unit) decays
    geometrically into that range, and every CPU operation on such a number takes a slow
    microcode path: a fifth of SAC's update time on Pendulum-v1. Numbers that small change
    no update.
    """
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


#: Values of ``torch.set_float32_matmul_precision`` (an algorithm's ``matmulPrecision``).
MATMUL_PRECISIONS = ("highest", "high", "medium")


def check_matmul_precision(value: str) -> None:
    """Refuse a ``matmulPrecision`` torch does not know, naming the field."""
    if value not in MATMUL_PRECISIONS:
        raise ValueError(
            f"spec.hyperparameters.matmulPrecision: {value!r} is not one of "
            f"{', '.join(MATMUL_PRECISIONS)}"
        )


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """float32 matrix products at ``precision`` while inside, the previous setting after.

    ``highest`` computes them in float32; ``high`` lets CUDA use TensorFloat32; ``medium``
    lets the hardware multiply in bfloat16 where it has fast bfloat16 units (CPUs with
    AMX or AVX512-BF16 through oneDNN, GPUs since Ampere), accumulating and storing in
    float32; elsewhere each falls back to the next more precise one. The setting is
    process-wide in torch, hence restored on the way out.
    """
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


#: ``make_vector_env``'s ways of stepping the copies (PPOArgs.vector_env).
VECTOR_ENVS = ("auto", "sync", "async")


def _usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup v2 quota (a pod's
    CPU limit, which neither ``os.cpu_count`` nor the affinity shows)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cpus


def resolve_vector_env(mode: str, env_id: str, num_envs: int) -> str:
    """``"sync"`` or ``"async"`` for ``mode`` (one of ``VECTOR_ENVS``).

    ``auto`` steps the copies in worker processes (``async``) only where that pays: more than
    one copy, more than one usable CPU, and an environment whose own step dominates (highway-env
    ids; a classic-control step takes microseconds, less than the pipe to a worker costs).
    """
    if mode not in VECTOR_ENVS:
        raise ValueError(
            f"spec.hyperparameters.vectorEnv: {mode!r} is not one of {', '.join(VECTOR_ENVS)}"
        )
    if mode != "auto":
        return mode
    from kexp_trainers.envs.highway import is_highway_env

    expensive = is_highway_env(env_id)
    return "async" if num_envs > 1 and _usable_cpus() > 1 and expensive else "sync"


def make_vector_env(
    env_id: str, num_envs: int, seed: int, config: dict[str, Any], vector_env: str = "auto"
) -> Any:
    """``num_envs`` copies of ``env_id``, resetting within the same step.

    ``vector_env`` (``VECTOR_ENVS``, see ``resolve_vector_env``) says whether the copies step
    in this process (gymnasium's ``SyncVectorEnv``) or one worker process each
    (``AsyncVectorEnv``); both give the same observations, rewards and ``info`` (the
    ``final_obs`` of same-step resets, RecordEpisodeStatistics' ``episode``). Close the result
    to end the workers.

    Each copy comes from ``envs.highway.make_env``, the factory the evaluation and the dataset
    command use too, so observations (flat float32 for highway-env) are the same everywhere.
    Raises ValueError naming spec.environment.id (or .config) for an id or setting that
    does not exist (``AsyncVectorEnv`` builds one copy in this process first, so its errors
    are raised here too).
    """
    from kexp_trainers.envs.highway import make_env

    fns = [lambda i=i: make_env(env_id, config, seed + i) for i in range(num_envs)]
    same_step = gym.vector.AutoresetMode.SAME_STEP
    envs: Any
    if resolve_vector_env(vector_env, env_id, num_envs) == "async":
        envs = gym.vector.AsyncVectorEnv(fns, autoreset_mode=same_step)
    else:
        envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=same_step)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    return envs
