"""GAE and PPO's loss terms against values computed by hand, and the policy's hand-written
log-probabilities against torch.distributions."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal

from kexp_trainers.algorithms import common
from kexp_trainers.algorithms.common import clipped_policy_loss, gae, value_loss
from kexp_trainers.algorithms.ppo import Agent, PPOArgs


def col(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64).reshape(-1, 1)


def one(value: float) -> np.ndarray:
    return np.array([value], dtype=np.float64)


def test_gae_without_episode_ends() -> None:
    # delta_t = 1 + 0.9 * 0.5 - 0.5 = 0.95; A2 = 0.95; A1 = 0.95 + 0.72 * 0.95 = 1.634;
    # A0 = 0.95 + 0.72 * 1.634 = 2.12648 (gamma * lambda = 0.9 * 0.8 = 0.72).
    adv, ret = gae(
        col(1, 1, 1),
        col(0.5, 0.5, 0.5),
        col(0, 0, 0),
        one(0.5),
        one(0.0),
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
        one(0.5),
        one(0.0),
        0.9,
        0.8,
    )
    assert adv.flatten().tolist() == pytest.approx([1.31, 0.5, 0.95])
    # And the last step does not bootstrap when the next observation starts an episode.
    adv, _ = gae(
        col(1.0),
        col(0.5),
        col(0),
        one(9.0),
        one(1.0),
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


def test_gae_over_several_envs_matches_the_step_by_step_recursion() -> None:
    # The textbook loop, one environment and one step at a time, against the array version.
    rng = np.random.default_rng(0)
    steps, envs, gamma, lam = 9, 3, 0.97, 0.9
    rewards, values = rng.normal(size=(steps, envs)), rng.normal(size=(steps, envs))
    dones = (rng.random((steps, envs)) < 0.3).astype(np.float64)
    next_value, next_done = rng.normal(size=envs), np.array([0.0, 1.0, 0.0])
    adv, ret = gae(rewards, values, dones, next_value, next_done, gamma, lam)
    for n in range(envs):
        last = 0.0
        for t in reversed(range(steps)):
            following = next_value[n] if t == steps - 1 else values[t + 1, n]
            ended = next_done[n] if t == steps - 1 else dones[t + 1, n]
            delta = rewards[t, n] + gamma * following * (1 - ended) - values[t, n]
            last = delta + gamma * lam * (1 - ended) * last
            assert adv[t, n] == pytest.approx(last)
            assert ret[t, n] == pytest.approx(last + values[t, n])


@pytest.mark.parametrize(
    "space",
    [gym.spaces.Discrete(3), gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)],
    ids=["categorical", "gaussian"],
)
def test_agent_log_probs_and_entropy_equal_torch_distributions(space: gym.Space) -> None:  # type: ignore[type-arg]
    torch.manual_seed(0)
    agent = Agent(4, space, 16)
    with torch.no_grad():  # away from the near-uniform initial policy
        agent.actor[-1].weight.normal_()
        if not agent.discrete:
            agent.log_std.fill_(-0.7)
    obs = torch.randn(32, 4)
    out = agent.actor(obs)
    if agent.discrete:
        dist: Categorical | Normal = Categorical(logits=out)
    else:
        dist = Normal(out, agent.log_std.exp().expand_as(out))
    action, logprob, value = agent.sample(obs)
    ref_logprob, ref_entropy = dist.log_prob(action), dist.entropy()
    if not agent.discrete:
        ref_logprob, ref_entropy = ref_logprob.sum(-1), ref_entropy.sum(-1)
    torch.testing.assert_close(logprob, ref_logprob)
    torch.testing.assert_close(value, agent.critic(obs).squeeze(-1))
    logprob2, entropy, value2 = agent.evaluate_actions(obs, action)
    torch.testing.assert_close(logprob2, ref_logprob)
    torch.testing.assert_close(entropy, ref_entropy)
    torch.testing.assert_close(value2, value)
    greedy = agent.greedy(obs)
    torch.testing.assert_close(greedy, dist.probs.argmax(-1) if agent.discrete else dist.mean)


def test_categorical_sampling_draws_like_torch_multinomial() -> None:
    torch.manual_seed(1)
    agent = Agent(4, gym.spaces.Discrete(3), 16)
    obs = torch.randn(256, 4)
    torch.manual_seed(2)
    action, _, _ = agent.sample(obs)
    torch.manual_seed(2)
    expected = torch.multinomial(agent.actor(obs).softmax(-1), 1).squeeze(-1)
    assert torch.equal(action, expected)


def test_vector_env_hyperparameter() -> None:
    assert PPOArgs().vector_env == "auto"
    assert PPOArgs.from_hyperparameters({"vectorEnv": "async"}).vector_env == "async"
    with pytest.raises(ValueError, match=r"spec\.hyperparameters\.vectorEnv: 'threads'"):
        PPOArgs.from_hyperparameters({"vectorEnv": "threads"})


def test_auto_vector_env_uses_workers_only_where_they_pay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(common, "_usable_cpus", lambda: 4)
    assert common.resolve_vector_env("auto", "highway-fast-v0", 4) == "async"
    assert common.resolve_vector_env("auto", "highway-fast-v0", 1) == "sync"
    assert common.resolve_vector_env("auto", "CartPole-v1", 4) == "sync"  # microsecond steps
    assert common.resolve_vector_env("sync", "highway-fast-v0", 4) == "sync"
    assert common.resolve_vector_env("async", "CartPole-v1", 4) == "async"
    monkeypatch.setattr(common, "_usable_cpus", lambda: 1)
    assert common.resolve_vector_env("auto", "highway-fast-v0", 4) == "sync"
