"""GAE and PPO's loss terms against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kexp_trainers.algorithms.common import clipped_policy_loss, gae, value_loss
from kexp_trainers.algorithms.ppo import PPOArgs


def col(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(-1, 1)


def test_gae_without_episode_ends() -> None:
    # delta_t = 1 + 0.9 * 0.5 - 0.5 = 0.95; A2 = 0.95; A1 = 0.95 + 0.72 * 0.95 = 1.634;
    # A0 = 0.95 + 0.72 * 1.634 = 2.12648 (gamma * lambda = 0.9 * 0.8 = 0.72).
    adv, ret = gae(
        col(1, 1, 1),
        col(0.5, 0.5, 0.5),
        col(0, 0, 0),
        torch.tensor([0.5], dtype=torch.float64),
        torch.tensor([0.0], dtype=torch.float64),
        0.9,
        0.8,
    )
    assert adv.flatten().tolist() == pytest.approx([2.12648, 1.634, 0.95])
    assert ret.flatten().tolist() == pytest.approx([2.62648, 2.134, 1.45])


def test_gae_cuts_the_bootstrap_where_an_episode_ends() -> None:
    # The observation at t=2 starts a new episode, so step 1 does not look past it:
    # A2 = 0.95; A1 = 1 - 0.5 = 0.5; A0 = 0.95 + 0.72 * 0.5 = 1.31.
    adv, _ = gae(
        col(1, 1, 1),
        col(0.5, 0.5, 0.5),
        col(0, 0, 1),
        torch.tensor([0.5], dtype=torch.float64),
        torch.tensor([0.0], dtype=torch.float64),
        0.9,
        0.8,
    )
    assert adv.flatten().tolist() == pytest.approx([1.31, 0.5, 0.95])
    # And the last step does not bootstrap when the next observation starts an episode.
    adv, _ = gae(
        col(1.0),
        col(0.5),
        col(0),
        torch.tensor([9.0], dtype=torch.float64),
        torch.tensor([1.0], dtype=torch.float64),
        0.9,
        0.8,
    )
    assert adv.item() == pytest.approx(0.5)


def test_clipped_policy_loss_by_hand() -> None:
    # ratio e^0.5 = 1.6487 for A = +1 is clipped to 1.2 (loss -1.2); ratio e^-0.5 = 0.6065 for
    # A = -1 gives max(0.6065, 0.8) = 0.8: mean = (-1.2 + 0.8) / 2 = -0.2.
    new = torch.tensor([0.5, -0.5])
    old = torch.tensor([0.0, 0.0])
    loss = clipped_policy_loss(new, old, torch.tensor([1.0, -1.0]), 0.2)
    assert loss.item() == pytest.approx(-0.2)
    # Inside the clip range the surrogate is plain -A * ratio.
    small = clipped_policy_loss(torch.tensor([0.1]), torch.tensor([0.0]), torch.tensor([2.0]), 0.2)
    assert small.item() == pytest.approx(-2 * math.exp(0.1))


def test_value_loss_is_half_the_mean_squared_error() -> None:
    assert value_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item() == 2.5


def test_hyperparameters_are_read_from_camel_case_and_unknown_ones_named() -> None:
    args = PPOArgs.from_hyperparameters({"learningRate": 1e-3, "nSteps": 256, "gaeLambda": 0.9})
    assert (args.learning_rate, args.n_steps, args.gae_lambda) == (1e-3, 256, 0.9)
    with pytest.raises(ValueError, match=r"spec\.hyperparameters\.learningrate: not a PPO"):
        PPOArgs.from_hyperparameters({"learningrate": 1e-3})
