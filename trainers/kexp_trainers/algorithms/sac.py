"""SAC (Haarnoja et al. 2018), CleanRL style: twin Q, tanh-squashed Gaussian, auto entropy.

Continuous (Box) action spaces only. The replay buffer is part of the checkpoint, so a
restarted pod continues with the experience it had. Hyperparameters come from
``spec.hyperparameters`` (camelCase) with the defaults of ``SACArgs``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kexp_trainers.algorithms.common import args_from_hyperparameters

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

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> SACArgs:
        """Read camelCase spec.hyperparameters; unknown keys are refused, naming the field."""
        return args_from_hyperparameters(cls, hp, "SAC")


class SoftQ(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim + act_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], 1)).squeeze(-1)


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

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(obs)
        log_std = torch.tanh(self.log_std(h))
        log_std = self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (log_std + 1)
        return self.mean(h), log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action, log-prob, deterministic action), with the tanh change of variables."""
        mean, log_std = self(obs)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x = normal.rsample()
        y = torch.tanh(x)
        action = y * self.scale + self.bias
        logprob = normal.log_prob(x) - torch.log(self.scale * (1 - y.pow(2)) + 1e-6)
        return action, logprob.sum(1), torch.tanh(mean) * self.scale + self.bias


@dataclass
class TrainState:
    """Networks, optimisers, entropy temperature and the replay buffer."""

    actor: Actor
    q1: SoftQ
    q2: SoftQ
    q1_target: SoftQ
    q2_target: SoftQ
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
    qs = [SoftQ(obs_dim, act_dim, args.hidden).to(device) for _ in range(4)]
    qs[2].load_state_dict(qs[0].state_dict())
    qs[3].load_state_dict(qs[1].state_dict())
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
        qs[0],
        qs[1],
        qs[2],
        qs[3],
        torch.optim.Adam(actor.parameters(), lr=args.learning_rate),
        torch.optim.Adam([*qs[0].parameters(), *qs[1].parameters()], lr=args.q_learning_rate),
        log_alpha,
        torch.optim.Adam([log_alpha], lr=args.q_learning_rate),
        buffer,
    )


def state_dict(s: TrainState) -> dict[str, Any]:
    """What a checkpoint holds (the used part of the replay buffer included)."""
    return {
        "step": s.step,
        "size": s.size,
        "modules": {
            k: getattr(s, k).state_dict()
            for k in (
                "actor",
                "q1",
                "q2",
                "q1_target",
                "q2_target",
                "actor_opt",
                "q_opt",
                "alpha_opt",
            )
        },
        "log_alpha": s.log_alpha.detach().cpu(),
        "buffer": {k: v[: s.size] for k, v in s.buffer.items()},
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
    }


def load_state(saved: dict[str, Any], envs: Any, args: SACArgs, device: torch.device) -> TrainState:
    s = new_state(envs, args, device)
    for key, value in saved["modules"].items():
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


def _update(
    s: TrainState, args: SACArgs, device: torch.device, target_entropy: float
) -> dict[str, float]:
    idx = np.random.randint(0, s.size, args.batch_size)
    b = {k: torch.as_tensor(v[idx], device=device) for k, v in s.buffer.items()}
    alpha = s.log_alpha.exp().detach()
    with torch.no_grad():
        next_act, next_logp, _ = s.actor.sample(b["next_obs"])
        target_q = (
            torch.min(s.q1_target(b["next_obs"], next_act), s.q2_target(b["next_obs"], next_act))
            - alpha * next_logp
        )
        target = b["rew"] + (1 - b["done"]) * args.gamma * target_q
    q_loss = F.mse_loss(s.q1(b["obs"], b["act"]), target) + F.mse_loss(
        s.q2(b["obs"], b["act"]), target
    )
    s.q_opt.zero_grad()
    q_loss.backward()
    s.q_opt.step()
    stats = {"q_loss": q_loss.item(), "alpha": alpha.item()}
    if s.step % args.policy_frequency == 0:
        for _ in range(args.policy_frequency):
            act, logp, _ = s.actor.sample(b["obs"])
            q = torch.min(s.q1(b["obs"], act), s.q2(b["obs"], act))
            actor_loss = (s.log_alpha.exp().detach() * logp - q).mean()
            s.actor_opt.zero_grad()
            actor_loss.backward()
            s.actor_opt.step()
            with torch.no_grad():
                _, logp, _ = s.actor.sample(b["obs"])
            alpha_loss = (-s.log_alpha.exp() * (logp + target_entropy)).mean()
            s.alpha_opt.zero_grad()
            alpha_loss.backward()
            s.alpha_opt.step()
        stats["actor_loss"] = actor_loss.item()
    with torch.no_grad():
        for net, target_net in ((s.q1, s.q1_target), (s.q2, s.q2_target)):
            for p, tp in zip(net.parameters(), target_net.parameters(), strict=True):
                tp.mul_(1 - args.tau).add_(args.tau * p)
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
