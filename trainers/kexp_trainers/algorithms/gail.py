"""GAIL (Ho & Ermon 2016): PPO whose reward comes from a discriminator against expert data.

After every rollout, a discriminator D(s, a) learns to tell the expert's transitions of
``spec.expertData`` (label 1) from the policy's (label 0) by binary cross-entropy. PPO then
learns from the reward -log(1 - D(s, a)) instead of the environment's (``ppo.train``'s
``relabel`` hook; the rollout, GAE and clipped loss are PPO's own). That reward is positive,
so it also pays for staying alive, as the expert does in the tasks this is used for.

``episode_reward`` is still the environment's return, so progress reads in the task's terms;
``gail_reward`` is the mean learnt reward of the last rollout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kexp_trainers.algorithms import ppo
from kexp_trainers.algorithms.common import args_from_hyperparameters
from kexp_trainers.algorithms.ppo import PPOArgs
from kexp_trainers.runtime.datasets import Demonstrations

METRICS = (*ppo.METRICS, "disc_loss", "disc_accuracy", "gail_reward")


@dataclass(frozen=True)
class GAILArgs(PPOArgs):
    """PPO's hyperparameters (the generator's) and the discriminator's."""

    #: Adam's learning rate for the discriminator.
    discriminator_learning_rate: float = 3e-4
    #: Passes of the discriminator over each rollout.
    discriminator_epochs: int = 1
    #: Policy transitions per discriminator step (with as many expert transitions).
    discriminator_batch_size: int = 256
    #: Width of the discriminator's two hidden layers.
    discriminator_hidden: int = 64

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> GAILArgs:
        """Read camelCase spec.hyperparameters; unknown keys are refused, naming the field."""
        return args_from_hyperparameters(cls, hp, "GAIL")


class Discriminator(nn.Module):
    """D(s, a) as a logit: an MLP on the observation and the (one-hot or clipped) action."""

    def __init__(self, obs_dim: int, action_space: gym.Space[Any], hidden: int) -> None:
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            self.n = act_dim = int(action_space.n)  # type: ignore[attr-defined]
        else:
            act_dim = int(np.prod(action_space.shape))  # type: ignore[arg-type]
            # PPO's Gaussian samples outside the bounds the environment clips to; unclipped,
            # they would let D spot the policy by its out-of-range actions alone.
            low = torch.as_tensor(action_space.low, dtype=torch.float32)  # type: ignore[attr-defined]
            high = torch.as_tensor(action_space.high, dtype=torch.float32)  # type: ignore[attr-defined]
            self.register_buffer("low", low)
            self.register_buffer("high", high)
        self.net = nn.Sequential(
            nn.Linear(obs_dim + act_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            encoded = F.one_hot(actions.long().reshape(-1), self.n).float()
        else:
            encoded = torch.max(torch.min(actions.reshape(len(obs), -1), self.high), self.low)
        return self.net(torch.cat([obs, encoded], 1)).squeeze(-1)


def discriminator_loss(expert_logits: torch.Tensor, policy_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with the expert labelled 1 and the policy 0, over both together."""
    logits = torch.cat([expert_logits, policy_logits])
    labels = torch.cat([torch.ones_like(expert_logits), torch.zeros_like(policy_logits)])
    return F.binary_cross_entropy_with_logits(logits, labels)


def gail_reward(logits: torch.Tensor) -> torch.Tensor:
    """-log(1 - D) with D = sigmoid(logit), which is softplus(logit): exact and stable."""
    return F.softplus(logits)


@dataclass
class TrainState:
    """The generator's PPO state and the discriminator, all in one checkpoint."""

    ppo: ppo.TrainState
    discriminator: Discriminator
    disc_optimizer: torch.optim.Optimizer

    @property
    def step(self) -> int:
        return self.ppo.step


def new_state(envs: Any, args: GAILArgs, device: torch.device) -> TrainState:
    """A fresh generator and discriminator."""
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    disc = Discriminator(obs_dim, envs.single_action_space, args.discriminator_hidden).to(device)
    optimizer = torch.optim.Adam(disc.parameters(), lr=args.discriminator_learning_rate)
    return TrainState(ppo.new_state(envs, args, device), disc, optimizer)


def state_dict(s: TrainState) -> dict[str, Any]:
    """PPO's checkpoint plus the discriminator; ``agent`` is what ``spec.initFrom`` loads."""
    return {
        **ppo.state_dict(s.ppo),
        "algorithm": "GAIL",
        "discriminator": s.discriminator.state_dict(),
        "disc_optimizer": s.disc_optimizer.state_dict(),
    }


def load_state(
    saved: dict[str, Any], envs: Any, args: GAILArgs, device: torch.device
) -> TrainState:
    """The state of a checkpoint written by ``state_dict``."""
    s = new_state(envs, args, device)
    s.ppo = ppo.load_state(saved, envs, args, device)
    s.discriminator.load_state_dict(saved["discriminator"])
    s.disc_optimizer.load_state_dict(saved["disc_optimizer"])
    return s


def warm_start(s: TrainState, saved: Mapping[str, Any]) -> None:
    """Start the generator from another run's policy (``spec.initFrom``), e.g. BC's."""
    ppo.load_policy(s.ppo.agent, saved)


def train(
    envs: Any,
    args: GAILArgs,
    total_steps: int,
    device: torch.device,
    *,
    expert: Demonstrations,
    state: TrainState | None = None,
    on_update: Callable[[int, dict[str, float]], None] = lambda _s, _m: None,
    on_checkpoint: Callable[[TrainState], None] = lambda _s: None,
    checkpoint_every: int | None = None,
) -> TrainState:
    """Train until ``total_steps`` environment steps (counting from ``state.step``)."""
    if state is None:
        state = new_state(envs, args, device)
    s = state
    disc, disc_opt = s.discriminator, s.disc_optimizer
    e_obs = torch.as_tensor(expert.obs, dtype=torch.float32, device=device).reshape(
        len(expert.obs), -1
    )
    e_act = torch.as_tensor(expert.actions, device=device)
    act_shape = envs.single_action_space.shape

    def relabel(
        obs_buf: torch.Tensor, act_buf: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        steps, num_envs = obs_buf.shape[:2]
        p_obs = obs_buf.reshape(steps * num_envs, -1)
        p_act = act_buf.reshape(steps * num_envs, *act_shape)
        losses, correct, seen = [], 0.0, 0
        for _ in range(args.discriminator_epochs):
            for idx in torch.randperm(len(p_obs), device=device).split(
                args.discriminator_batch_size
            ):
                e = torch.randint(len(e_obs), (len(idx),), device=device)
                expert_logits = disc(e_obs[e], e_act[e])
                policy_logits = disc(p_obs[idx], p_act[idx])
                loss = discriminator_loss(expert_logits, policy_logits)
                disc_opt.zero_grad()
                loss.backward()
                disc_opt.step()
                losses.append(loss.item())
                correct += float((expert_logits > 0).sum() + (policy_logits < 0).sum())
                seen += 2 * len(idx)
        with torch.no_grad():
            rewards = gail_reward(disc(p_obs, p_act)).reshape(steps, num_envs)
        stats = {
            "disc_loss": float(np.mean(losses)),
            "disc_accuracy": correct / max(seen, 1),
            "gail_reward": rewards.mean().item(),
        }
        return rewards, stats

    ppo.train(
        envs,
        args,
        total_steps,
        device,
        state=s.ppo,
        on_update=on_update,
        on_checkpoint=lambda _p: on_checkpoint(s),
        checkpoint_every=checkpoint_every,
        relabel=relabel,
    )
    return s


def evaluate(
    state: TrainState, env: Any, episodes: int, seed: int, device: torch.device
) -> list[tuple[float, dict[str, Any]]]:
    """(return, last info) of ``episodes`` greedy episodes of the generator."""
    return ppo.evaluate(state.ppo, env, episodes, seed, device)
