"""PPO (Schulman et al. 2017), CleanRL style: vectorised envs, GAE, clipped objective.

Discrete actions use a categorical policy, continuous ones a Gaussian with a learned,
state-independent log standard deviation. Hyperparameters come from ``spec.hyperparameters``
(camelCase names, as in the Experiment) with the defaults of ``PPOArgs``.

GAIL and CIMRL are PPO with a hook each: ``relabel`` replaces the environment's rewards of a
rollout (GAIL's discriminator reward), ``extra_loss`` adds a term to every minibatch's loss
(CIMRL's imitation term). ``warm_start`` loads another run's actor (``spec.initFrom``), e.g.
a BC policy, which uses this file's ``Agent`` for exactly that reason.

Speed (``bench/trainer_throughput.py``): rollouts live in numpy buffers and GAE runs in numpy;
the policy's log-probabilities and entropies are written out rather than built as
``torch.distributions`` objects (the same formulas, without per-step construction and argument
checks); Adam is fused; losses are read out (``.item()``) once per update, not per minibatch.
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

from kexp_trainers.algorithms.common import (
    VECTOR_ENVS,
    adam,
    args_from_hyperparameters,
    clipped_policy_loss,
    gae,
    value_loss,
)

#: Metric names this algorithm reports (fixed, so dashboards can rely on them).
METRICS = ("episode_reward", "policy_loss", "value_loss", "entropy", "approx_kl", "sps")


@dataclass(frozen=True)
class PPOArgs:
    """PPO's hyperparameters; names are the camelCase keys of spec.hyperparameters.

    ``vector_env`` (``vectorEnv``) is how the ``numEnvs`` copies of the environment step:
    ``sync`` one after another in the trainer's process (gymnasium's ``SyncVectorEnv``),
    ``async`` in one worker process each (``AsyncVectorEnv``: the copies step in parallel, at
    the cost of a pipe round trip per step), ``auto`` (the default) ``async`` when there is
    more than one copy, more than one usable CPU (affinity and cgroup quota) and the
    environment is highway-env's (whose own step is milliseconds), else ``sync``. Learning is
    the same either way (same seeds, observations, same-step resets); it only changes speed.
    """

    learning_rate: float = 2.5e-4
    n_steps: int = 128  # rollout length per environment
    batch_size: int = 64  # minibatch size
    n_epochs: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    anneal_lr: bool = True
    hidden: int = 64
    vector_env: str = "auto"  # sync | async | auto: see the class docstring

    def __post_init__(self) -> None:
        if self.vector_env not in VECTOR_ENVS:
            raise ValueError(
                f"spec.hyperparameters.vectorEnv: {self.vector_env!r} is not one of "
                f"{', '.join(VECTOR_ENVS)}"
            )

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> PPOArgs:
        """Read camelCase spec.hyperparameters; unknown keys are refused, naming the field."""
        return args_from_hyperparameters(cls, hp, "PPO")


_HALF_LOG_2PI = 0.5 * float(np.log(2 * np.pi))


def _mlp(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` for the actor's and critic's Linear-Tanh-Linear-Tanh-Linear, called as
    functions: the same arithmetic without nn.Module's per-call hooks, which cost more than
    the matmuls of a 64-wide MLP on a few observations."""
    first, _, second, _, head = net
    x = torch.tanh(F.linear(x, first.weight, first.bias))
    x = torch.tanh(F.linear(x, second.weight, second.bias))
    return F.linear(x, head.weight, head.bias)


def _layer(inputs: int, outputs: int, std: float = np.sqrt(2)) -> nn.Linear:
    layer = nn.Linear(inputs, outputs)
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, 0.0)
    return layer


class Agent(nn.Module):
    """Separate actor and critic MLPs (tanh), CleanRL's architecture."""

    def __init__(
        self, obs_dim: int, action_space: gym.Space[Any], hidden: int, algorithm: str = "PPO"
    ) -> None:
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            out = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            out = int(action_space.shape[0])
        else:
            raise ValueError(
                f"spec.algorithm: {algorithm} cannot act in an action space {action_space}"
            )
        self.critic = nn.Sequential(
            _layer(obs_dim, hidden),
            nn.Tanh(),
            _layer(hidden, hidden),
            nn.Tanh(),
            _layer(hidden, 1, 1.0),
        )
        self.actor = nn.Sequential(
            _layer(obs_dim, hidden),
            nn.Tanh(),
            _layer(hidden, hidden),
            nn.Tanh(),
            _layer(hidden, out, 0.01),
        )
        if not self.discrete:
            self.log_std = nn.Parameter(torch.zeros(1, out))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return _mlp(self.critic, obs).squeeze(-1)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action, log-prob, value) of a sampled action: the rollout's path (no entropy)."""
        out = _mlp(self.actor, obs)
        if self.discrete:
            # Gumbel-max: argmax(logits + Gumbel noise) samples the categorical exactly; it is
            # what torch.multinomial does on CPU (same draws), at half its cost for a few rows.
            action = (out - torch.empty_like(out).exponential_().log()).argmax(-1)
            logprob = out.log_softmax(-1).gather(-1, action.unsqueeze(-1)).squeeze(-1)
            return action, logprob, self.value(obs)
        noise = torch.randn_like(out)
        action = out + self.log_std.exp() * noise
        logprob = (-0.5 * noise.pow(2) - self.log_std - _HALF_LOG_2PI).sum(-1)
        return action, logprob, self.value(obs)

    def evaluate_actions(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-prob, entropy, value) of ``action`` taken at ``obs``: the update's path.

        Categorical: log-softmax of the logits. Gaussian (independent dimensions, summed):
        log N(a; mu, sigma) = -(a - mu)^2 / (2 sigma^2) - log sigma - log(2 pi) / 2, and the
        entropy 1/2 + log(2 pi) / 2 + log sigma, the same for every observation.
        """
        out = _mlp(self.actor, obs)
        if self.discrete:
            logp_all = out.log_softmax(-1)
            logprob = logp_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            return logprob, entropy, self.value(obs)
        z = (action - out) * (-self.log_std).exp()
        logprob = (-0.5 * z.pow(2) - self.log_std - _HALF_LOG_2PI).sum(-1)
        entropy = (0.5 + _HALF_LOG_2PI + self.log_std).sum(-1).expand(len(obs))
        return logprob, entropy, self.value(obs)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """The most likely action, for evaluation."""
        out = _mlp(self.actor, obs)
        return out.argmax(-1) if self.discrete else out


@dataclass
class TrainState:
    """Everything a checkpoint holds, so a restarted pod continues where it was."""

    agent: Agent
    optimizer: torch.optim.Optimizer
    step: int = 0


def new_state(envs: Any, args: PPOArgs, device: torch.device) -> TrainState:
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    agent = Agent(obs_dim, envs.single_action_space, args.hidden).to(device)
    optimizer = adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    return TrainState(agent, optimizer)


def state_dict(s: TrainState) -> dict[str, Any]:
    """What a checkpoint holds."""
    return {
        "agent": s.agent.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "step": s.step,
        "torch_rng": torch.get_rng_state(),
    }


def load_state(saved: dict[str, Any], envs: Any, args: PPOArgs, device: torch.device) -> TrainState:
    s = new_state(envs, args, device)
    s.agent.load_state_dict(saved["agent"])
    s.optimizer.load_state_dict(saved["optimizer"])
    s.step = int(saved["step"])
    torch.set_rng_state(saved["torch_rng"])
    return s


def warm_start(s: TrainState, saved: Mapping[str, Any]) -> None:
    """Start from another run's policy (``spec.initFrom``): see ``load_policy``."""
    load_policy(s.agent, saved)


def load_policy(agent: Agent, saved: Mapping[str, Any]) -> None:
    """Load the actor (and a Gaussian's log-std) of another run's checkpoint into ``agent``.

    Works with any checkpoint holding this file's ``Agent`` under ``"agent"`` (PPO, BC, GAIL,
    CIMRL); the critic and the optimiser start fresh, since the other run may not have trained
    them. Raises ValueError naming spec.initFrom when the checkpoint does not fit.
    """
    weights = saved.get("agent") if isinstance(saved, Mapping) else None
    if not isinstance(weights, Mapping):
        raise ValueError(
            "spec.initFrom: the checkpoint holds no policy this trainer can load "
            "(made by SAC or a custom trainer?)"
        )
    actor = {k.removeprefix("actor."): v for k, v in weights.items() if k.startswith("actor.")}
    try:
        agent.actor.load_state_dict(actor)
        if not agent.discrete and "log_std" in weights:
            agent.log_std.data.copy_(weights["log_std"])
    except (RuntimeError, KeyError) as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise ValueError(
            "spec.initFrom: the checkpoint's policy does not fit this run's network (same "
            f"environment and spec.hyperparameters.hidden?): {detail or exc}"
        ) from None


#: GAIL's hook: (observations [T, N, obs], actions [T, N, ...]) of a rollout -> the rewards
#: [T, N] to learn from instead of the environment's, and statistics to report.
Relabel = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
#: CIMRL's hook: (agent, step) -> a loss term added to every minibatch, and statistics.
ExtraLoss = Callable[[Agent, int], tuple[torch.Tensor, dict[str, float]]]


def train(
    envs: Any,
    args: PPOArgs,
    total_steps: int,
    device: torch.device,
    *,
    state: TrainState | None = None,
    on_update: Callable[[int, dict[str, float]], None] = lambda _s, _m: None,
    on_checkpoint: Callable[[TrainState], None] = lambda _s: None,
    checkpoint_every: int | None = None,
    relabel: Relabel | None = None,
    extra_loss: ExtraLoss | None = None,
) -> TrainState:
    """Train until ``total_steps`` environment steps (counting from ``state.step``).

    ``relabel`` and ``extra_loss`` are the hooks GAIL and CIMRL build on (see the module's
    docstring); plain PPO passes neither.
    """
    num_envs = envs.num_envs
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    if state is None:
        state = new_state(envs, args, device)
    agent, optimizer = state.agent, state.optimizer
    params = list(agent.parameters())
    batch = num_envs * args.n_steps
    updates = max(1, total_steps // batch)
    act_shape = envs.single_action_space.shape
    act_dtype = np.int64 if agent.discrete else np.float32
    # The rollout is numpy: per-step writes and GAE's recursion are many tiny operations.
    obs_buf = np.zeros((args.n_steps, num_envs, obs_dim), np.float32)
    act_buf = np.zeros((args.n_steps, num_envs, *act_shape), act_dtype)
    logp_buf = np.zeros((args.n_steps, num_envs), np.float32)
    rew_buf = np.zeros((args.n_steps, num_envs), np.float32)
    done_buf = np.zeros((args.n_steps, num_envs), np.float32)
    val_buf = np.zeros((args.n_steps, num_envs), np.float32)

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=device)

    raw, _ = envs.reset()
    next_obs = np.asarray(raw, dtype=np.float32).reshape(num_envs, obs_dim)
    next_done = np.zeros(num_envs, np.float32)
    recent_returns: list[float] = []
    hook_stats: dict[str, float]
    last_checkpoint = state.step
    first_update = state.step // batch
    for update in range(first_update, updates):
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - update / updates)
        started = time.perf_counter()
        for t in range(args.n_steps):
            obs_buf[t], done_buf[t] = next_obs, next_done
            with torch.inference_mode():
                action, logprob, value = agent.sample(tensor(next_obs))
            env_action = action.cpu().numpy()
            act_buf[t], logp_buf[t] = env_action, logprob.cpu().numpy()
            val_buf[t] = value.cpu().numpy()
            raw, reward, terminated, truncated, info = envs.step(env_action)
            rew_buf[t] = reward
            next_obs = np.asarray(raw, dtype=np.float32).reshape(num_envs, obs_dim)
            next_done = np.logical_or(terminated, truncated).astype(np.float32)
            if "episode" in info:
                finished = info["_episode"]
                recent_returns += [float(r) for r in info["episode"]["r"][finished]]
        state.step += batch

        rewards, hook_stats = rew_buf, {}
        if relabel is not None:
            relabelled, hook_stats = relabel(tensor(obs_buf), tensor(act_buf))
            rewards = relabelled.detach().cpu().numpy().astype(np.float32)
        with torch.inference_mode():
            next_value = agent.value(tensor(next_obs)).cpu().numpy()
        advantages, returns = gae(
            rewards, val_buf, done_buf, next_value, next_done, args.gamma, args.gae_lambda
        )
        b_obs = tensor(obs_buf.reshape(batch, obs_dim))
        b_act = tensor(act_buf.reshape(batch, *act_shape))
        b_logp = tensor(logp_buf.reshape(-1))
        b_adv, b_ret = tensor(advantages.reshape(-1)), tensor(returns.reshape(-1))
        extra_stats: dict[str, float] = {}
        for _ in range(args.n_epochs):
            for idx in torch.randperm(batch, device=device).split(args.batch_size):
                logp, entropy, value = agent.evaluate_actions(b_obs[idx], b_act[idx])
                adv = b_adv[idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg = clipped_policy_loss(logp, b_logp[idx], adv, args.clip_range)
                vf = value_loss(value, b_ret[idx])
                ent = entropy.mean()
                loss = pg + args.vf_coef * vf - args.ent_coef * ent
                if extra_loss is not None:
                    extra, extra_stats = extra_loss(agent, state.step)
                    loss = loss + extra
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(params, args.max_grad_norm, foreach=True)
                optimizer.step()
        stats: dict[str, float] = {}
        if args.n_epochs > 0:
            # The last minibatch's terms, read once per update (a read waits for the values).
            with torch.no_grad():
                log_ratio = logp - b_logp[idx]
                kl = (log_ratio.exp() - 1 - log_ratio).mean()
                read = torch.stack([pg, vf, ent, kl]).tolist()
            names = ("policy_loss", "value_loss", "entropy", "approx_kl")
            stats = dict(zip(names, read, strict=True))
        stats.update(extra_stats)
        stats.update(hook_stats)
        stats["sps"] = batch / (time.perf_counter() - started)
        if recent_returns:
            stats["episode_reward"] = float(np.mean(recent_returns[-20:]))
        on_update(state.step, stats)
        if checkpoint_every and state.step - last_checkpoint >= checkpoint_every:
            last_checkpoint = state.step
            on_checkpoint(state)
    return state


def evaluate(
    state: TrainState, env: Any, episodes: int, seed: int, device: torch.device
) -> list[tuple[float, dict[str, Any]]]:
    """(return, last info) of ``episodes`` greedy episodes on a single environment."""
    return evaluate_agent(state.agent, env, episodes, seed, device)


def evaluate_agent(
    agent: Agent, env: Any, episodes: int, seed: int, device: torch.device
) -> list[tuple[float, dict[str, Any]]]:
    """``evaluate`` for any algorithm whose policy is this file's ``Agent`` (BC, GAIL, CIMRL)."""
    results = []
    for episode in range(episodes):
        raw, info = env.reset(seed=seed + 10_000 + episode)
        done, total = False, 0.0
        while not done:
            obs = torch.as_tensor(raw, dtype=torch.float32, device=device).reshape(1, -1)
            with torch.no_grad():
                action = agent.greedy(obs)[0].cpu().numpy()
            raw, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            done = bool(terminated or truncated)
        results.append((total, info))
    return results
