"""SAC (Haarnoja et al. 2018), CleanRL style: twin Q, tanh-squashed Gaussian, auto entropy.

Continuous (Box) action spaces only. For speed (``bench/trainer_throughput.py``) the two
critics are one batched ensemble (``TwinQ``: one matmul per layer for both, and one for both
targets), the policy's log-probability is written out rather than built from
``torch.distributions``, Adam is fused, the targets' Polyak update is one foreach operation,
the critics' weights get no gradients during the actor's step, and updates flush subnormal
floats to zero (``flush_denormals``).

The replay buffer is part of the checkpoint, so a restarted pod continues with the experience
it had. Hyperparameters come from ``spec.hyperparameters`` (camelCase) with the defaults of
``SACArgs``.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kexp_trainers.algorithms.common import (
    adam,
    args_from_hyperparameters,
    check_matmul_precision,
    flush_denormals,
    matmul_precision,
)

METRICS = ("episode_reward", "q_loss", "actor_loss", "alpha", "sps")


@dataclass(frozen=True)
class SACArgs:
    """SAC's hyperparameters; names are the camelCase keys of spec.hyperparameters."""

    learning_rate: float = 3e-4  # policy
    q_learning_rate: float = 1e-3
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int = 5000
    gamma: float = 0.99
    tau: float = 0.005
    policy_frequency: int = 2
    hidden: int = 256
    #: Internal precision of float32 matrix products during training (``highest``, ``high``,
    #: ``medium``; see ``common.matmul_precision``). ``medium`` multiplies in bfloat16 where
    #: the hardware has fast bfloat16 units, keeping float32 weights, sums and everything
    #: else; the updates are matmul-bound, and ``bench.learning``/``bench.trainer_throughput``
    #: show the same returns.
    matmul_precision: str = "medium"

    def __post_init__(self) -> None:
        check_matmul_precision(self.matmul_precision)

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> SACArgs:
        """Read camelCase spec.hyperparameters; unknown keys are refused, naming the field."""
        return args_from_hyperparameters(cls, hp, "SAC")


class TwinQ(nn.Module):
    """SAC's two soft Q networks as one ensemble: Q_k(s, a) for k = 0, 1 in one pass.

    Each is an MLP of ``[obs, act]`` with two ReLU layers of ``hidden``, initialised as
    ``nn.Linear`` (uniform in +-1/sqrt(fan in)). Their weights are stacked on a leading
    dimension of ``n`` (``weights[l][k]`` is network k's layer l, shaped [in, out], the
    transpose of ``nn.Linear.weight``), so one batched matmul (``torch.baddbmm``) per layer
    evaluates both: half the calls, and kernels on bigger blocks.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, n: int = 2) -> None:
        super().__init__()
        sizes = [obs_dim + act_dim, hidden, hidden, 1]
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(
                nn.Parameter(torch.empty(n, fan_in, fan_out).uniform_(-bound, bound))
            )
            self.biases.append(nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound)))
        self.activation = nn.ReLU()

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """[n, batch]: every network's Q of every (obs, act) row."""
        x = torch.cat([obs, act], 1)
        x = x.expand(len(self.weights[0]), *x.shape)  # one view per network, no copy
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if layer < len(self.weights) - 1:
                x = self.activation(x)
        return x.squeeze(-1)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def tanh_gaussian_logprob(
    noise: torch.Tensor, log_std: torch.Tensor, x: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log-density of ``tanh(x) * scale + bias`` with ``x = mean + exp(log_std) * noise``.

    The Gaussian's log N(x) = -noise^2 / 2 - log_std - log(2 pi) / 2, less the log-Jacobian
    of the squashing, log(scale) + log(1 - tanh(x)^2), written as
    ``2 (log 2 - x - softplus(-2x))`` (torch's ``TanhTransform``: exact where tanh
    saturates), summed over the action's dimensions. Equal to
    ``TransformedDistribution(Normal(mean, std), [TanhTransform(), AffineTransform(bias,
    scale)]).log_prob`` (tests/unit/test_sac_math.py) without building distribution objects.
    """
    log_jacobian = 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x)) + log_scale
    return (-0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI - log_jacobian).sum(-1)


class Actor(nn.Module):
    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim: int, space: gym.spaces.Box, hidden: int) -> None:
        super().__init__()
        act_dim = int(np.prod(space.shape))
        self.body = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.mean = nn.Linear(hidden, act_dim)
        self.log_std = nn.Linear(hidden, act_dim)
        high, low = torch.as_tensor(space.high), torch.as_tensor(space.low)
        self.register_buffer("scale", ((high - low) / 2).float())
        self.register_buffer("bias", ((high + low) / 2).float())
        self.register_buffer("log_scale", self.scale.log(), persistent=False)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(obs)
        log_std = torch.tanh(self.log_std(h))
        log_std = self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (log_std + 1)
        return self.mean(h), log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action, log-prob, deterministic action) of the tanh-squashed Gaussian policy."""
        mean, log_std = self(obs)
        noise = torch.randn_like(mean)
        x = mean + log_std.exp() * noise  # reparameterised: gradients reach mean and log_std
        action = torch.tanh(x) * self.scale + self.bias
        logprob = tanh_gaussian_logprob(noise, log_std, x, self.log_scale)
        return action, logprob, torch.tanh(mean) * self.scale + self.bias


@dataclass
class TrainState:
    """Networks, optimisers, entropy temperature and the replay buffer."""

    actor: Actor
    q: TwinQ  # both critics
    q_target: TwinQ  # their Polyak averages
    actor_opt: torch.optim.Optimizer
    q_opt: torch.optim.Optimizer
    log_alpha: torch.Tensor
    alpha_opt: torch.optim.Optimizer
    buffer: dict[str, np.ndarray]
    size: int = 0
    step: int = 0


def new_state(envs: Any, args: SACArgs, device: torch.device) -> TrainState:
    space = envs.single_action_space
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"spec.algorithm: SAC needs continuous (Box) actions, not {space}")
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(space.shape))
    actor = Actor(obs_dim, space, args.hidden).to(device)
    q = TwinQ(obs_dim, act_dim, args.hidden).to(device)
    q_target = copy.deepcopy(q).requires_grad_(False)
    log_alpha = torch.zeros(1, requires_grad=True, device=device)
    capacity = min(args.buffer_size, 10_000_000)
    buffer = {
        "obs": np.zeros((capacity, obs_dim), np.float32),
        "next_obs": np.zeros((capacity, obs_dim), np.float32),
        "act": np.zeros((capacity, act_dim), np.float32),
        "rew": np.zeros(capacity, np.float32),
        "done": np.zeros(capacity, np.float32),
    }
    return TrainState(
        actor,
        q,
        q_target,
        adam(actor.parameters(), lr=args.learning_rate),
        adam(q.parameters(), lr=args.q_learning_rate),
        log_alpha,
        adam([log_alpha], lr=args.q_learning_rate),
        buffer,
    )


def state_dict(s: TrainState) -> dict[str, Any]:
    """What a checkpoint holds (the used part of the replay buffer included)."""
    return {
        "step": s.step,
        "size": s.size,
        "modules": {
            k: getattr(s, k).state_dict()
            for k in ("actor", "q", "q_target", "actor_opt", "q_opt", "alpha_opt")
        },
        "log_alpha": s.log_alpha.detach().cpu(),
        "buffer": {k: v[: s.size] for k, v in s.buffer.items()},
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
    }


def upgrade_separate_critics(modules: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints written before ``TwinQ`` held two critics (``q1``, ``q2``, and their
    targets) as separate Linear stacks: stack their weights into ``TwinQ``'s layout. Their
    optimizer's moments belong to the old layout and are dropped (the critics' Adam starts
    afresh, the networks and everything else resume as saved)."""
    if "q" in modules or "q1" not in modules:
        return modules

    def stacked(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> Any:
        layers = sorted({int(k.split(".")[1]) for k in first})  # net.0, net.2, net.4
        out = {}
        for i, layer in enumerate(layers):
            w = [net[f"net.{layer}.weight"].T for net in (first, second)]
            b = [net[f"net.{layer}.bias"].unsqueeze(0) for net in (first, second)]
            out[f"weights.{i}"], out[f"biases.{i}"] = torch.stack(w), torch.stack(b)
        return out

    rest = {k: v for k, v in modules.items() if k not in ("q1", "q2", "q1_target", "q2_target")}
    rest.pop("q_opt", None)
    return {
        **rest,
        "q": stacked(modules["q1"], modules["q2"]),
        "q_target": stacked(modules["q1_target"], modules["q2_target"]),
    }


def load_state(saved: dict[str, Any], envs: Any, args: SACArgs, device: torch.device) -> TrainState:
    s = new_state(envs, args, device)
    for key, value in upgrade_separate_critics(saved["modules"]).items():
        getattr(s, key).load_state_dict(value)
    with torch.no_grad():
        s.log_alpha.copy_(saved["log_alpha"].to(device))
    s.size, s.step = int(saved["size"]), int(saved["step"])
    for key, value in saved["buffer"].items():
        s.buffer[key][: s.size] = value
    torch.set_rng_state(saved["torch_rng"])
    np.random.set_state(saved["numpy_rng"])
    return s


def train(
    envs: Any,
    args: SACArgs,
    total_steps: int,
    device: torch.device,
    *,
    state: TrainState | None = None,
    on_update: Callable[[int, dict[str, float]], None] = lambda _s, _m: None,
    on_checkpoint: Callable[[TrainState], None] = lambda _s: None,
    checkpoint_every: int | None = None,
    report_every: int = 1000,
) -> TrainState:
    """Train until ``total_steps`` environment steps (counting from ``state.step``)."""
    s = state or new_state(envs, args, device)
    n = envs.num_envs
    target_entropy = -float(np.prod(envs.single_action_space.shape))
    capacity = len(s.buffer["rew"])
    obs, _ = envs.reset()
    returns: list[float] = []
    stats: dict[str, float] = {}
    last_report, last_checkpoint, started = s.step, s.step, time.perf_counter()
    with matmul_precision(args.matmul_precision):  # restored when training ends
        while s.step < total_steps:
            if s.step < args.learning_starts:
                action = np.array([envs.single_action_space.sample() for _ in range(n)])
            else:
                with torch.no_grad():
                    action, _, _ = s.actor.sample(
                        torch.as_tensor(obs, dtype=torch.float32, device=device)
                    )
                action = action.cpu().numpy()
            next_obs, reward, terminated, truncated, info = envs.step(action)
            real_next = next_obs.copy()
            for i in np.flatnonzero(np.logical_or(terminated, truncated)):
                # SAME_STEP autoreset puts the reset observation in next_obs; learn from the last.
                real_next[i] = info["final_obs"][i]
            for i in range(n):
                j = s.size % capacity
                s.buffer["obs"][j], s.buffer["next_obs"][j] = obs[i], real_next[i]
                s.buffer["act"][j], s.buffer["rew"][j] = action[i], reward[i]
                s.buffer["done"][j] = float(terminated[i])  # truncation still bootstraps
                s.size = min(s.size + 1, capacity) if s.size < capacity else s.size
            if "episode" in info:
                returns += [float(r) for r in info["episode"]["r"][info["_episode"]]]
            obs = next_obs
            s.step += n
            if s.step >= args.learning_starts:
                stats = _update(s, args, device, target_entropy)
            if s.step - last_report >= report_every:
                stats["sps"] = (s.step - last_report) / (time.perf_counter() - started)
                if returns:
                    stats["episode_reward"] = float(np.mean(returns[-10:]))
                on_update(s.step, dict(stats))
                last_report, started = s.step, time.perf_counter()
            if checkpoint_every and s.step - last_checkpoint >= checkpoint_every:
                last_checkpoint = s.step
                on_checkpoint(s)
    return s


@flush_denormals()
def _update(
    s: TrainState, args: SACArgs, device: torch.device, target_entropy: float
) -> dict[str, float]:
    idx = np.random.randint(0, s.size, args.batch_size)
    obs, next_obs, act, rew, done = (
        torch.as_tensor(s.buffer[k][idx], device=device)
        for k in ("obs", "next_obs", "act", "rew", "done")
    )
    alpha = s.log_alpha.exp().detach()
    with torch.no_grad():
        next_act, next_logp, _ = s.actor.sample(next_obs)
        target_q = s.q_target(next_obs, next_act).min(0).values - alpha * next_logp
        target = rew + (1 - done) * args.gamma * target_q
    # Each critic's mean squared error, summed: F.mse_loss(q1, target) + F.mse_loss(q2, target).
    q_loss = (s.q(obs, act) - target).pow(2).mean(1).sum()
    s.q_opt.zero_grad()
    q_loss.backward()
    s.q_opt.step()
    stats = {"q_loss": q_loss.item(), "alpha": alpha.item()}
    if s.step % args.policy_frequency == 0:
        # The actor's loss differentiates through the critics, not into their weights.
        s.q.requires_grad_(False)
        for _ in range(args.policy_frequency):
            act_pi, logp, _ = s.actor.sample(obs)
            actor_loss = (s.log_alpha.exp().detach() * logp - s.q(obs, act_pi).min(0).values).mean()
            s.actor_opt.zero_grad()
            actor_loss.backward()
            s.actor_opt.step()
            # The temperature learns from the same samples' log-probabilities (as SB3 does).
            alpha_loss = (-s.log_alpha.exp() * (logp.detach() + target_entropy)).mean()
            s.alpha_opt.zero_grad()
            alpha_loss.backward()
            s.alpha_opt.step()
        s.q.requires_grad_(True)
        stats["actor_loss"] = actor_loss.item()
    with torch.no_grad():  # Polyak: target += tau * (online - target), all tensors at once
        torch._foreach_lerp_(list(s.q_target.parameters()), list(s.q.parameters()), args.tau)
    return stats


def evaluate(
    s: TrainState, env: Any, episodes: int, seed: int, device: torch.device
) -> list[tuple[float, dict[str, Any]]]:
    """(return, last info) of ``episodes`` deterministic episodes."""
    results = []
    for episode in range(episodes):
        raw, info = env.reset(seed=seed + 10_000 + episode)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                _, _, act = s.actor.sample(
                    torch.as_tensor(raw, dtype=torch.float32, device=device).reshape(1, -1)
                )
            raw, reward, terminated, truncated, info = env.step(act[0].cpu().numpy())
            total += float(reward)
            done = bool(terminated or truncated)
        results.append((total, info))
    return results
