"""SAC's hand-written pieces against the library code they replace: the batched twin critic
against two separate Linear stacks, the tanh-Gaussian log-probability against
torch.distributions, and one update's Polyak step and frozen-critic bookkeeping."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

from kexp_trainers.algorithms import sac
from kexp_trainers.algorithms.common import flush_denormals, make_vector_env, matmul_precision
from kexp_trainers.algorithms.sac import Actor, SACArgs, TwinQ, tanh_gaussian_logprob


def _separate_critics(q: TwinQ) -> list[nn.Sequential]:
    """Two ordinary Linear-ReLU-Linear-ReLU-Linear stacks holding ``q``'s weights."""
    nets = []
    for k in range(2):
        layers = []
        for w, b in zip(q.weights, q.biases, strict=True):
            linear = nn.Linear(w.shape[1], w.shape[2])
            with torch.no_grad():
                linear.weight.copy_(w[k].T)  # TwinQ keeps [in, out]; Linear [out, in]
                linear.bias.copy_(b[k, 0])
            layers += [linear, nn.ReLU()]
        nets.append(nn.Sequential(*layers[:-1]))
    return nets


def test_twin_q_equals_two_separate_linear_stacks() -> None:
    torch.manual_seed(0)
    q = TwinQ(obs_dim=5, act_dim=2, hidden=16)
    obs, act = torch.randn(7, 5), torch.randn(7, 2)
    nets = _separate_critics(q)
    expected = torch.stack([net(torch.cat([obs, act], 1)).squeeze(-1) for net in nets])
    out = q(obs, act)
    assert out.shape == (2, 7)
    torch.testing.assert_close(out, expected)
    # The gradients with respect to the action (the actor's path) agree too.
    act.requires_grad_(True)
    (grad,) = torch.autograd.grad(q(obs, act).min(0).values.sum(), act)
    act_ref = act.detach().clone().requires_grad_(True)
    ref = torch.min(*[net(torch.cat([obs, act_ref], 1)).squeeze(-1) for net in nets])
    (grad_ref,) = torch.autograd.grad(ref.sum(), act_ref)
    torch.testing.assert_close(grad, grad_ref)


def test_twin_q_initialises_like_nn_linear() -> None:
    # nn.Linear draws weights and biases uniformly in +-1/sqrt(fan_in); so does TwinQ.
    torch.manual_seed(0)
    q = TwinQ(obs_dim=3, act_dim=1, hidden=256)
    for w, b in zip(q.weights, q.biases, strict=True):
        bound = 1.0 / w.shape[1] ** 0.5
        assert float(w.detach().abs().max()) <= bound
        assert float(b.detach().abs().max()) <= bound
        assert float(w.detach().abs().max()) > 0.9 * bound  # spread over the whole range
    assert [w.shape for w in q.weights] == [(2, 4, 256), (2, 256, 256), (2, 256, 1)]
    assert not torch.equal(q.weights[1][0], q.weights[1][1])  # two different critics


@pytest.mark.parametrize(("low", "high"), [(-2.0, 2.0), (-1.0, 3.0)])
def test_tanh_gaussian_logprob_equals_torch_distributions(low: float, high: float) -> None:
    torch.manual_seed(1)
    mean = torch.randn(64, 3, dtype=torch.float64)
    log_std = torch.empty(64, 3, dtype=torch.float64).uniform_(-3.0, 1.0)
    noise = torch.randn(64, 3, dtype=torch.float64)
    x = mean + log_std.exp() * noise
    scale = torch.full((3,), (high - low) / 2, dtype=torch.float64)
    bias = torch.full((3,), (high + low) / 2, dtype=torch.float64)
    dist = TransformedDistribution(
        Normal(mean, log_std.exp()), [TanhTransform(), AffineTransform(bias, scale)]
    )
    # Keep tanh off saturation, where inverting the squashed action (what the reference
    # has to do) loses the precision the forward formula keeps.
    keep = x.abs().max(1).values < 4.0
    assert int(keep.sum()) > 40
    expected = dist.log_prob(torch.tanh(x) * scale + bias).sum(-1)
    ours = tanh_gaussian_logprob(noise, log_std, x, scale.log())
    torch.testing.assert_close(ours[keep], expected[keep], rtol=1e-9, atol=1e-9)


def test_actor_sample_is_a_squashed_gaussian_in_bounds() -> None:
    torch.manual_seed(2)
    space = gym.spaces.Box(
        np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32), dtype=np.float32
    )
    actor = Actor(obs_dim=3, space=space, hidden=32)
    obs = torch.randn(500, 3)
    action, logprob, deterministic = actor.sample(obs)
    assert action.shape == deterministic.shape == (500, 2)
    assert logprob.shape == (500,)
    low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
    assert bool(((action >= low) & (action <= high)).all())
    # The same draw through torch.distributions gives the same log-probability.
    mean, log_std = actor(obs)
    torch.manual_seed(3)
    action, logprob, _ = actor.sample(obs)
    torch.manual_seed(3)
    x = mean + log_std.exp() * torch.randn_like(mean)
    dist = TransformedDistribution(
        Normal(mean, log_std.exp()),
        [TanhTransform(cache_size=1), AffineTransform(actor.bias, actor.scale)],
    )
    squashed = dist.transforms[1](dist.transforms[0](x))  # cached: log_prob needs no atanh
    torch.testing.assert_close(action, squashed)
    torch.testing.assert_close(logprob, dist.log_prob(squashed).sum(-1), rtol=1e-5, atol=1e-4)


def test_one_update_steps_the_critics_then_polyak_averages_the_targets() -> None:
    torch.manual_seed(4)
    np.random.seed(4)
    space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
    envs = SimpleNamespace(
        single_observation_space=gym.spaces.Box(-1.0, 1.0, (3,)), single_action_space=space
    )
    args = SACArgs(hidden=16, batch_size=8, buffer_size=64, tau=0.25, policy_frequency=2)
    s = sac.new_state(envs, args, torch.device("cpu"))
    for _key, array in s.buffer.items():
        array[:] = np.random.randn(*array.shape).astype(np.float32)
    s.buffer["done"][:] = 0.0
    s.size, s.step = 64, 2  # an actor step too (step % policy_frequency == 0)
    with torch.no_grad():  # targets apart from the critics, so the average shows
        for p in s.q_target.parameters():
            p.add_(1.0)
    target_before = copy.deepcopy(s.q_target.state_dict())
    actor_before = copy.deepcopy(s.actor.state_dict())
    stats = sac._update(s, args, torch.device("cpu"), target_entropy=-1.0)
    assert set(stats) == {"q_loss", "alpha", "actor_loss"}
    for name, p in s.q.named_parameters():
        expected = (1 - args.tau) * target_before[name] + args.tau * p.detach()
        torch.testing.assert_close(s.q_target.state_dict()[name], expected)
        assert p.requires_grad  # unfrozen again after the actor's step
    assert not any(p.requires_grad for p in s.q_target.parameters())
    assert any(not torch.equal(actor_before[k], v) for k, v in s.actor.state_dict().items())
    assert float(s.log_alpha.detach()) != 0.0  # the temperature learnt too


def test_updates_flush_subnormal_floats_and_restore_the_default() -> None:
    subnormal = 1e-40  # below float32's smallest normal number, 1.2e-38
    assert float(torch.tensor([subnormal])) != 0.0
    with flush_denormals():
        assert float(torch.tensor([subnormal])) == 0.0
    assert float(torch.tensor([subnormal])) != 0.0  # torch's default again


def test_a_checkpoint_with_separate_critics_resumes_with_the_same_q_values() -> None:
    torch.manual_seed(3)
    old = [_separate_critics(TwinQ(3, 1, 16))[k] for k in range(2)]
    old_targets = [copy.deepcopy(net) for net in old]

    def as_soft_q(net: nn.Sequential) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in net.state_dict().items()}  # SoftQ held `net`

    modules = {
        "actor": {"kept": torch.zeros(1)},
        "q1": as_soft_q(old[0]),
        "q2": as_soft_q(old[1]),
        "q1_target": as_soft_q(old_targets[0]),
        "q2_target": as_soft_q(old_targets[1]),
        "q_opt": {"state": {}, "param_groups": []},
    }
    upgraded = sac.upgrade_separate_critics(modules)
    assert set(upgraded) == {"actor", "q", "q_target"}  # the old optimizer layout is dropped
    q = TwinQ(3, 1, 16)
    q.load_state_dict(upgraded["q"])
    obs, act = torch.randn(5, 3), torch.randn(5, 1)
    expected = torch.stack([net(torch.cat([obs, act], 1)).squeeze(-1) for net in old])
    torch.testing.assert_close(q(obs, act), expected)
    assert sac.upgrade_separate_critics(upgraded) is upgraded  # new checkpoints pass through


def test_matmul_precision_is_checked_and_restored() -> None:
    with pytest.raises(ValueError, match=r"spec\.hyperparameters\.matmulPrecision: 'fast'"):
        SACArgs.from_hyperparameters({"matmulPrecision": "fast"})
    assert SACArgs.from_hyperparameters({"matmulPrecision": "highest"}).matmul_precision == (
        "highest"
    )
    before = torch.get_float32_matmul_precision()
    with matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize("precision", ["medium", "highest"])
def test_training_runs_at_its_matmul_precision_and_restores_the_setting(precision: str) -> None:
    envs = make_vector_env("Pendulum-v1", 1, 0, {})
    args = SACArgs(hidden=16, batch_size=8, learning_starts=20, matmul_precision=precision)
    seen: list[str] = []
    before = torch.get_float32_matmul_precision()
    state = sac.train(
        envs,
        args,
        60,
        torch.device("cpu"),
        on_update=lambda _step, _stats: seen.append(torch.get_float32_matmul_precision()),
        report_every=20,
    )
    envs.close()
    assert state.step == 60
    assert seen == [precision] * 3
    assert torch.get_float32_matmul_precision() == before
