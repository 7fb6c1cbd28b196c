"""The trainer throughput bench's claims, checked without training: that the Stable-Baselines3
side is given kexp's hyperparameters and network, and that its no-op instrumentation has the
real objects' interface. (SB3 itself is not needed: the mapping is plain data.)"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch
from bench import trainer_throughput as tt
from torch import nn

from kexp_trainers.algorithms import ppo, sac
from kexp_trainers.runtime.checkpoints import CheckpointStore
from kexp_trainers.runtime.metrics import TrainerMetrics
from kexp_trainers.runtime.reporting import RunReporter


def _envs(action_space: gym.Space) -> SimpleNamespace:  # type: ignore[type-arg]
    """What new_state reads of a vector env."""
    obs = gym.spaces.Box(-1.0, 1.0, (4,))
    return SimpleNamespace(single_observation_space=obs, single_action_space=action_space)


def _mlp(seq: nn.Sequential) -> tuple[list[int], set[type[nn.Module]]]:
    """(hidden widths, activation types) of an MLP."""
    linears = [m for m in seq if isinstance(m, nn.Linear)]
    activations = {type(m) for m in seq if not isinstance(m, nn.Linear)}
    return [m.out_features for m in linears[:-1]], activations


def test_ppo_steps_rounds_down_to_whole_rollouts() -> None:
    assert tt.ppo_steps(100_000, 4, 128) == 99_840  # 195 rollouts of 512
    assert tt.ppo_steps(512, 4, 128) == 512
    assert tt.ppo_steps(100, 4, 128) == 512  # at least one rollout, as kexp's max(1, ...)
    with pytest.raises(ValueError, match="whole number of rollouts"):
        tt.sb3_ppo_kwargs(tt.PPO_ARGS, 4, 1000)


def test_ppo_hyperparameters_map_one_to_one() -> None:
    args = tt.PPO_ARGS
    kw = tt.sb3_ppo_kwargs(args, 4, 512 * 10)
    assert kw["n_steps"] == args.n_steps == 128
    assert kw["batch_size"] == args.batch_size == 128
    assert kw["n_epochs"] == args.n_epochs == 4
    assert kw["gamma"] == args.gamma == 0.99
    assert kw["gae_lambda"] == args.gae_lambda == 0.95
    assert kw["clip_range"] == args.clip_range == 0.2
    assert kw["ent_coef"] == args.ent_coef == 0.0
    assert kw["max_grad_norm"] == args.max_grad_norm == 0.5
    # kexp's value loss is 0.5 * MSE (common.value_loss), SB3's the plain MSE.
    assert kw["vf_coef"] == 0.5 * args.vf_coef == 0.25
    values, returns = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    from kexp_trainers.algorithms.common import value_loss

    sb3_term = kw["vf_coef"] * nn.functional.mse_loss(returns, values)
    assert float(sb3_term) == pytest.approx(float(args.vf_coef * value_loss(values, returns)))
    # Neither side clips the value, stops early on KL, or uses gSDE; both normalise advantages.
    assert kw["clip_range_vf"] is None
    assert kw["target_kl"] is None
    assert kw["use_sde"] is False
    assert kw["normalize_advantage"] is True


def test_ppo_learning_rate_anneals_as_kexp_does() -> None:
    args = tt.PPO_ARGS
    num_envs, updates = 4, 10
    batch = num_envs * args.n_steps
    schedule = tt.sb3_ppo_kwargs(args, num_envs, batch * updates)["learning_rate"]
    assert schedule == tt.AnnealedLR(args.learning_rate, updates)
    for k in range(updates):
        # SB3 evaluates the schedule before update k with the rollout just collected counted.
        progress_remaining = 1.0 - (k + 1) * batch / (batch * updates)
        kexp_lr = args.learning_rate * (1.0 - k / updates)  # ppo.train's anneal_lr
        assert schedule(progress_remaining) == pytest.approx(kexp_lr)
    assert schedule(1.0) == args.learning_rate  # never above the initial rate
    constant = ppo.PPOArgs(anneal_lr=False)
    assert tt.sb3_ppo_kwargs(constant, 1, constant.n_steps)["learning_rate"] == 2.5e-4


@pytest.mark.parametrize(
    "space", [gym.spaces.Discrete(2), gym.spaces.Box(-1.0, 1.0, (2,))], ids=["discrete", "box"]
)
def test_ppo_network_is_kexps_agent(space: gym.Space) -> None:  # type: ignore[type-arg]
    args = tt.PPO_ARGS
    policy = tt.sb3_ppo_kwargs(args, 4, 512)["policy_kwargs"]
    state = ppo.new_state(_envs(space), args, torch.device("cpu"))
    actor_widths, actor_acts = _mlp(state.agent.actor)
    critic_widths, critic_acts = _mlp(state.agent.critic)
    assert policy["net_arch"] == {"pi": actor_widths, "vf": critic_widths}
    assert actor_widths == critic_widths == [64, 64]
    assert actor_acts == critic_acts == {policy["activation_fn"]} == {nn.Tanh}
    assert policy["ortho_init"] is True  # kexp's _layer: orthogonal, gains sqrt(2)/0.01/1
    assert policy["optimizer_class"] is type(state.optimizer) is torch.optim.Adam
    assert policy["optimizer_kwargs"]["eps"] == state.optimizer.param_groups[0]["eps"] == 1e-5
    if isinstance(space, gym.spaces.Box):
        assert policy["log_std_init"] == float(state.agent.log_std.detach().mean()) == 0.0


def test_sac_hyperparameters_map_one_to_one() -> None:
    args = tt.SAC_ARGS
    kw = tt.sb3_sac_kwargs(args)
    assert kw["learning_rate"] == args.learning_rate == 3e-4
    assert kw["q_learning_rate"] == args.q_learning_rate == 1e-3
    assert kw["buffer_size"] == args.buffer_size == 1_000_000
    assert kw["learning_starts"] == args.learning_starts == 1000
    assert kw["batch_size"] == args.batch_size == 256
    assert kw["tau"] == args.tau == 0.005
    assert kw["gamma"] == args.gamma == 0.99
    # One env step, one critic update and one target update; kexp's delayed actor updates
    # (policy_frequency of them every policy_frequency steps) are one per step on average.
    assert (kw["train_freq"], kw["gradient_steps"], kw["target_update_interval"]) == (1, 1, 1)
    assert kw["ent_coef"] == "auto"
    assert kw["target_entropy"] == "auto"
    assert kw["use_sde"] is False


def test_sac_network_and_optimisers_are_kexps() -> None:
    args = tt.SAC_ARGS
    policy = tt.sb3_sac_kwargs(args)["policy_kwargs"]
    s = sac.new_state(_envs(gym.spaces.Box(-2.0, 2.0, (1,))), args, torch.device("cpu"))
    actor_widths = [m.out_features for m in s.actor.body if isinstance(m, nn.Linear)]
    actor_acts = {type(m) for m in s.actor.body if not isinstance(m, nn.Linear)}
    # The two critics are one batched ensemble (sac.TwinQ): weights [n_critics, in, out].
    q_widths = [w.shape[-1] for w in s.q.weights][:-1]
    q_acts = {type(s.q.activation)}
    assert policy["net_arch"] == actor_widths == q_widths == [256, 256]
    assert actor_acts == q_acts == {policy["activation_fn"]} == {nn.ReLU}
    assert policy["n_critics"] == 2 == s.q.weights[0].shape[0] == s.q_target.weights[0].shape[0]
    for opt in (s.actor_opt, s.q_opt, s.alpha_opt):
        assert type(opt) is policy["optimizer_class"] is torch.optim.Adam
        assert opt.param_groups[0]["eps"] == policy["optimizer_kwargs"]["eps"]
    kw = tt.sb3_sac_kwargs(args)
    assert s.actor_opt.param_groups[0]["lr"] == kw["learning_rate"]
    assert s.q_opt.param_groups[0]["lr"] == s.alpha_opt.param_groups[0]["lr"]
    assert s.q_opt.param_groups[0]["lr"] == kw["q_learning_rate"]
    assert float(s.log_alpha.detach().exp()) == 1.0  # SB3's "auto" starts at 1.0 too


def test_sb3_runs_on_worker_processes_wherever_kexp_does() -> None:
    # kexp's default vector env (auto) steps highway-env's copies in worker processes, so SB3
    # gets a SubprocVecEnv row there; both in-process on CartPole, where workers only cost.
    assert tt.PPO_ARGS.vector_env == "auto"
    assert tt.SB3_VEC_ENVS["CartPole-v1"] == ("DummyVecEnv",)
    for env_id, vec_envs in tt.SB3_VEC_ENVS.items():
        kexp = tt.resolve_vector_env(tt.PPO_ARGS.vector_env, env_id, tt.PPO_ENVS)
        assert vec_envs[0] == "DummyVecEnv"  # SB3's make_vec_env default, always a row
        assert ("SubprocVecEnv" in vec_envs) == (kexp == "async"), env_id
    # highway-env's rows: SB3 on the stock simulator, and once with kexp's speed-ups
    assert tt.SB3_VEC_ENVS["highway-fast-v0"] == (
        "DummyVecEnv",
        "SubprocVecEnv",
        "SubprocVecEnv+speedups",
    )


def test_sb3_runs_on_the_stock_simulator_unless_told() -> None:
    assert tt.split_vec_env("DummyVecEnv") == ("DummyVecEnv", False)
    assert tt.split_vec_env("SubprocVecEnv") == ("SubprocVecEnv", False)
    assert tt.split_vec_env("SubprocVecEnv+speedups") == ("SubprocVecEnv", True)


def test_spec_hyperparameters_round_trip() -> None:
    hp = tt.kexp_hyperparameters(tt.PPO_ARGS)
    assert hp["batchSize"] == 128
    assert hp["nSteps"] == 128
    assert ppo.PPOArgs.from_hyperparameters(hp) == tt.PPO_ARGS


def test_returns_equal() -> None:
    assert tt.returns_equal([500.0] * 10, [500.0] * 10) == (True, 25.0)
    assert tt.returns_equal([480.0] * 10, [500.0] * 10)[0]  # within 5%
    assert not tt.returns_equal([400.0] * 10, [500.0] * 10)[0]
    assert tt.returns_equal([600.0] * 10, [500.0] * 10)[0]  # better is fine
    # Noisy returns widen the tolerance to two standard errors of the difference of means.
    equal, tolerance = tt.returns_equal([-150.0, -250.0], [-100.0, -100.0])
    assert tolerance == pytest.approx(2 * (50.0**2 / 2) ** 0.5)  # 70.7 > 5% of 100
    assert not equal  # -200 < -100 - 70.7
    assert tt.returns_equal([-100.0, -160.0], [-100.0, -100.0])[0]  # -130 vs -100 - 42.4


def test_noop_instrumentation_has_the_real_interface() -> None:
    real_metrics = TrainerMetrics("e", "ns")
    noop_metrics = tt.NoopMetrics()
    for name in ("steps", "steps_per_second", "episode_reward", "checkpoint_upload_seconds"):
        for method in ("inc", "set", "observe"):
            if hasattr(getattr(real_metrics, name), method):
                getattr(getattr(noop_metrics, name), method)(1.0)
    noop_metrics.loss("policy_loss", 1.0)
    noop_metrics.eval_score("reward", 1.0)
    # What train_run calls on the store and the reporter exists on the real ones too.
    for cls, noop in ((CheckpointStore, tt.NoopStore), (RunReporter, tt.NoopReporter)):
        public = {n for n, _ in inspect.getmembers(noop) if not n.startswith("_")}
        public -= {"saved_at", "scores", "client"}  # the bench's own records
        assert public <= {n for n, _ in inspect.getmembers(cls)}, cls
