"""What the algorithms truly share: GAE, the PPO loss terms, environment making.

The functions here are pure tensor code, tested against hand-computed values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

import gymnasium as gym
import torch

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


def make_vector_env(env_id: str, num_envs: int, seed: int, config: dict[str, Any]) -> Any:
    """``num_envs`` copies of ``env_id`` stepped in-process, resetting within the same step.

    Raises ValueError naming spec.environment.id when gymnasium does not know the id.
    """
    if env_id not in gym.registry:
        with contextlib.suppress(ImportError):
            import highway_env  # noqa: F401 - importing it registers the highway-env ids
    if env_id not in gym.registry:
        raise ValueError(f"spec.environment.id: {env_id!r} is not a registered environment")
    kwargs = {"config": config} if config else {}
    envs = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        **kwargs,
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    return envs
