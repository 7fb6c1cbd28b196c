"""BC, GAIL and CIMRL's loss terms and schedules against values computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from kexp_trainers.algorithms import bc, cimrl, gail, ppo
from kexp_trainers.algorithms.common import bc_loss
from kexp_trainers.runtime.datasets import Demonstrations

TEMPLATES = Path(__file__).resolve().parents[2] / "examples" / "templates"


def test_bc_cross_entropy_by_hand() -> None:
    # Logits (0, 0) give p = 1/2 each: -ln(1/2) = ln 2. Logits (ln 3, 0) give p = (3/4, 1/4),
    # and the expert's action 0 costs -ln(3/4). The loss is the mean over the batch.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    loss = bc_loss(logits, torch.tensor([1, 0]), discrete=True)
    assert loss.item() == pytest.approx((math.log(2) - math.log(0.75)) / 2)


def test_bc_mean_squared_error_by_hand() -> None:
    # ((1 - 0)^2 + (2 - 0)^2 + (0 - 1)^2 + (0 - 0)^2) / 4 = 6 / 4.
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    loss = bc_loss(mean, torch.tensor([[0.0, 0.0], [1.0, 0.0]]), discrete=False)
    assert loss.item() == pytest.approx(1.5)


def test_discriminator_loss_by_hand() -> None:
    # An undecided discriminator (logit 0, D = 1/2) costs ln 2 on both sides.
    assert gail.discriminator_loss(torch.zeros(1), torch.zeros(1)).item() == pytest.approx(
        math.log(2)
    )
    # D = 3/4 on the expert (label 1): -ln(3/4); D = 1/4 on the policy (label 0): -ln(1 - 1/4).
    loss = gail.discriminator_loss(torch.tensor([math.log(3.0)]), torch.tensor([-math.log(3.0)]))
    assert loss.item() == pytest.approx(-math.log(0.75))
    # The mean is over both halves together: a perfect expert side halves the policy's cost.
    loss = gail.discriminator_loss(torch.tensor([50.0]), torch.tensor([0.0]))
    assert loss.item() == pytest.approx(math.log(2) / 2)


def test_gail_reward_is_minus_log_one_minus_d() -> None:
    # D = 1/2 -> -ln(1/2) = ln 2; D = 3/4 -> -ln(1/4) = ln 4; D -> 0 pays nearly nothing.
    rewards = gail.gail_reward(torch.tensor([0.0, math.log(3.0), -30.0], dtype=torch.float64))
    assert rewards.tolist() == pytest.approx([math.log(2), math.log(4), 0.0], abs=1e-12)
    # Stable where the naive formula is not: D = sigmoid(100) rounds to 1 in float32.
    assert gail.gail_reward(torch.tensor([100.0])).item() == pytest.approx(100.0)


def test_discriminator_encodes_actions() -> None:
    disc = gail.Discriminator(3, gym.spaces.Discrete(2), 8)
    assert disc(torch.zeros(4, 3), torch.tensor([0, 1, 1, 0])).shape == (4,)
    box = gail.Discriminator(3, gym.spaces.Box(-2.0, 2.0, (1,)), 8)
    obs = torch.zeros(2, 3)
    # Out-of-range policy actions are judged as the environment would execute them: clipped.
    assert box(obs, torch.tensor([[9.0], [-9.0]])).tolist() == pytest.approx(
        box(obs, torch.tensor([[2.0], [-2.0]])).tolist()
    )


def test_cimrl_weight_anneals_linearly_to_zero() -> None:
    weights = [cimrl.bc_weight_at(step, 0.1, 1000) for step in (0, 250, 500, 1000, 5000)]
    assert weights == pytest.approx([0.1, 0.075, 0.05, 0.0, 0.0])
    assert cimrl.bc_weight_at(10, 0.5, 0) == 0.0  # an anneal of 0 steps is over at once


def test_validation_holds_out_whole_episodes() -> None:
    dones = np.array([0, 1, 0, 0, 1, 0, 1, 1, 0, 1], dtype=bool)  # episodes of 2, 3, 2, 1, 2
    train_idx, val_idx = bc.split_episodes(dones, 0.4)
    assert sorted([*train_idx, *val_idx]) == list(range(10))
    episode = np.concatenate([[0], np.cumsum(dones[:-1])])
    held = set(episode[val_idx])
    assert len(held) == 2  # 40% of 5 episodes
    assert not held & set(episode[train_idx])  # never half an episode on each side
    assert np.array_equal(bc.split_episodes(dones, 0.4)[1], val_idx)  # the same every time
    assert len(bc.split_episodes(np.array([0, 0, 1], dtype=bool), 0.5)[1]) == 0


def test_hyperparameters_of_the_templates_are_accepted() -> None:
    args_types = {"BC": bc.BCArgs, "GAIL": gail.GAILArgs, "CIMRL": cimrl.CIMRLArgs}
    for algorithm, args_type in args_types.items():
        name = {"BC": "bc", "GAIL": "gail", "CIMRL": "cimrl"}[algorithm]
        spec = yaml.safe_load((TEMPLATES / f"{name}-highway.yaml").read_text())["spec"]
        assert spec["algorithm"] == algorithm
        args_type.from_hyperparameters(spec["hyperparameters"])
    args = gail.GAILArgs.from_hyperparameters({"discriminatorLearningRate": 1e-4, "nSteps": 64})
    assert (args.discriminator_learning_rate, args.n_steps) == (1e-4, 64)
    args = cimrl.CIMRLArgs.from_hyperparameters({"bcWeight": 0.5, "bcAnneal": 4096})
    assert (args.bc_weight, args.bc_anneal, args.clip_range) == (0.5, 4096, 0.2)
    with pytest.raises(ValueError, match=r"spec\.hyperparameters\.epoch: not a BC hyperparam"):
        bc.BCArgs.from_hyperparameters({"epoch": 3})
    with pytest.raises(ValueError, match=r"spec\.hyperparameters\.bcWeight: not a GAIL"):
        gail.GAILArgs.from_hyperparameters({"bcWeight": 0.1})


class _Envs:
    """Just the spaces new_state reads."""

    def __init__(self, action_space: gym.Space[object]) -> None:
        self.single_observation_space = gym.spaces.Box(-1.0, 1.0, (4,))
        self.single_action_space = action_space


def test_a_bc_policy_warm_starts_ppo_and_cimrl() -> None:
    envs = _Envs(gym.spaces.Discrete(2))
    cloned = bc.new_state(envs, bc.BCArgs(), torch.device("cpu"))
    saved = bc.state_dict(cloned)
    for module, args in ((ppo, ppo.PPOArgs()), (cimrl, cimrl.CIMRLArgs())):
        state = module.new_state(envs, args, torch.device("cpu"))
        module.warm_start(state, saved)
        obs = torch.randn(5, 4)
        assert torch.equal(state.agent.actor(obs), cloned.agent.actor(obs))
    narrow = ppo.new_state(envs, ppo.PPOArgs(hidden=32), torch.device("cpu"))
    with pytest.raises(
        ValueError, match=r"spec\.initFrom: .*spec\.hyperparameters\.hidden.*size mismatch"
    ):
        ppo.warm_start(narrow, saved)
    with pytest.raises(ValueError, match=r"spec\.initFrom: .* no policy"):
        ppo.warm_start(narrow, {"actor": {}})  # what SAC's checkpoints hold


def test_a_gaussian_policy_keeps_its_log_std_when_warm_started() -> None:
    envs = _Envs(gym.spaces.Box(-2.0, 2.0, (1,)))
    source = ppo.new_state(envs, ppo.PPOArgs(), torch.device("cpu"))
    source.agent.log_std.data.fill_(-1.5)
    target = gail.new_state(envs, gail.GAILArgs(), torch.device("cpu"))
    gail.warm_start(target, ppo.state_dict(source))
    assert target.ppo.agent.log_std.tolist() == [[-1.5]]


def test_bc_refuses_a_dataset_smaller_than_a_batch() -> None:
    data = Demonstrations(
        obs=np.zeros((100, 4), np.float32),
        actions=np.zeros(100, np.int64),
        rewards=np.zeros(100, np.float32),
        dones=np.arange(100) % 10 == 9,
        env_id="CartPole-v1",
        action_space={"type": "discrete", "n": 2},
    )
    bc.check_expert(data, bc.BCArgs(batch_size=64), 1)
    with pytest.raises(ValueError, match=r"spec\.hyperparameters\.batchSize: 256"):
        bc.check_expert(data, bc.BCArgs(batch_size=256), 1)
    # Two processes need a batch's half each from their half of the 90 training transitions.
    bc.check_expert(data, bc.BCArgs(batch_size=64), 2)
