"""What the algorithms truly share: GAE, the PPO and imitation loss terms, environment making.

The functions here are pure tensor code, tested against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

import gymnasium as gym
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
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns for a [T, N] rollout.

    ``dones[t]`` says that the observation at step t began a new episode (CleanRL's
    convention), so step t-1's bootstrap is cut there; ``next_value``/``next_done`` describe
    the observation after the last step.
    """
    steps = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        if t == steps - 1:
            nonterminal = 1.0 - next_done
            following = next_value
        else:
            nonterminal = 1.0 - dones[t + 1]
            following = values[t + 1]
        delta = rewards[t] + gamma * following * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
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


def make_vector_env(env_id: str, num_envs: int, seed: int, config: dict[str, Any]) -> Any:
    """``num_envs`` copies of ``env_id`` stepped in-process, resetting within the same step.

    Each copy comes from ``envs.highway.make_env``, the factory the evaluation and the dataset
    command use too, so observations (flat float32 for highway-env) are the same everywhere.
    Raises ValueError naming spec.environment.id (or .config) for an id or setting that
    does not exist.
    """
    from kexp_trainers.envs.highway import make_env

    envs = gym.vector.SyncVectorEnv(
        [lambda i=i: make_env(env_id, config, seed + i) for i in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    return envs
