"""Behaviour cloning: supervised learning of the expert's actions from ``spec.expertData``.

The policy is PPO's ``Agent`` and only its actor is trained, so a BC checkpoint warm-starts
PPO, GAIL or CIMRL through ``spec.initFrom`` (``ppo.load_policy``). Discrete actions learn by
cross-entropy, continuous ones by the mean squared error of the Gaussian's mean
(``common.bc_loss``).

A *step* is one expert transition learnt from, summed over processes: ``totalSteps`` and
``checkpointEvery`` count samples, as environment steps do for RL, so the same spec means the
same amount of training on one process or many. The run is rounded down to whole batches.

Under ``torchrun`` (``WORLD_SIZE`` > 1; ``run.py`` joins the process group) the actor is
wrapped in DistributedDataParallel and each process learns from its own shard of every epoch
(``DistributedSampler``); ``batchSize`` is the global batch, split over the processes, so the
optimisation does not change with the number of nodes. Only rank 0 validates, and ``run.py``
lets only rank 0 write checkpoints and reports. On CUDA, mixed precision (autocast and a
GradScaler) is on unless ``amp: false``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from kexp_trainers.algorithms.common import args_from_hyperparameters, bc_loss
from kexp_trainers.algorithms.ppo import Agent, evaluate_agent, load_policy
from kexp_trainers.runtime.datasets import Demonstrations

log = logging.getLogger("kexp_trainers.bc")

#: Metric names this algorithm reports (accuracies only for discrete actions).
METRICS = ("bc_loss", "accuracy", "val_loss", "val_accuracy", "sps")

#: Validation looks at no more transitions than this, so it stays cheap on large datasets.
MAX_VALIDATION = 20_000
#: Seed of the train/validation split and of the epochs' shuffles: fixed, so that every
#: process and every resumed attempt sees the same order.
DATA_SEED = 0


@dataclass(frozen=True)
class BCArgs:
    """BC's hyperparameters; names are the camelCase keys of spec.hyperparameters."""

    #: AdamW's learning rate.
    learning_rate: float = 1e-3
    #: Transitions per gradient step, over all processes together (each takes its share).
    batch_size: int = 256
    #: Upper bound on passes over the training split; 0 means spec.training.totalSteps alone
    #: decides the length. When the bound is the tighter one, the run ends before totalSteps.
    epochs: int = 0
    #: Width of the actor's two hidden layers: PPO's default, so that initFrom fits PPO/CIMRL.
    hidden: int = 64
    #: AdamW's decoupled weight decay.
    weight_decay: float = 0.0
    #: Share of the expert's episodes held out to report val_loss (whole episodes, since
    #: neighbouring transitions of one episode are near duplicates).
    validation_fraction: float = 0.1
    #: Gradient steps between two rows of metrics.
    log_interval: int = 10
    #: Mixed precision (float16 autocast with a GradScaler); only ever used on CUDA.
    amp: bool = True

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> BCArgs:
        """Read camelCase spec.hyperparameters; unknown keys are refused, naming the field."""
        return args_from_hyperparameters(cls, hp, "BC")


@dataclass
class TrainState:
    """Everything a checkpoint holds, so a restarted pod continues where it was."""

    agent: Agent
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: int = 0


def use_amp(args: BCArgs, device: torch.device) -> bool:
    """Whether this run trains in mixed precision: asked for, and on a GPU."""
    return args.amp and device.type == "cuda"


def new_state(envs: Any, args: BCArgs, device: torch.device) -> TrainState:
    """A fresh policy and optimiser; raises ValueError for an action space BC cannot act in."""
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    agent = Agent(obs_dim, envs.single_action_space, args.hidden, "BC").to(device)
    optimizer = torch.optim.AdamW(
        agent.actor.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp(args, device))
    return TrainState(agent, optimizer, scaler)


def state_dict(s: TrainState) -> dict[str, Any]:
    """What a checkpoint holds; ``agent`` is what ``spec.initFrom`` loads elsewhere."""
    return {
        "algorithm": "BC",
        "agent": s.agent.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scaler": s.scaler.state_dict(),
        "step": s.step,
        "torch_rng": torch.get_rng_state(),
    }


def load_state(saved: dict[str, Any], envs: Any, args: BCArgs, device: torch.device) -> TrainState:
    """The state of a checkpoint written by ``state_dict``."""
    s = new_state(envs, args, device)
    s.agent.load_state_dict(saved["agent"])
    s.optimizer.load_state_dict(saved["optimizer"])
    if saved.get("scaler"):
        s.scaler.load_state_dict(saved["scaler"])
    s.step = int(saved["step"])
    torch.set_rng_state(saved["torch_rng"])
    return s


def warm_start(s: TrainState, saved: Mapping[str, Any]) -> None:
    """Start from another run's policy (``spec.initFrom``), e.g. to continue cloning."""
    load_policy(s.agent, saved)


def split_episodes(
    dones: np.ndarray, fraction: float, seed: int = DATA_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation transitions, holding out whole episodes.

    ``dones[i]`` marks the last transition of an episode. At least one episode stays for
    training; with a single episode nothing is held out.
    """
    episode = np.concatenate([[0], np.cumsum(dones[:-1].astype(np.int64))])
    count = int(episode[-1]) + 1 if len(dones) else 0
    held_out = min(round(count * fraction), count - 1) if count > 1 else 0
    chosen = np.random.default_rng(seed).permutation(count)[:held_out]
    is_val = np.isin(episode, chosen)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_expert(expert: Demonstrations, args: BCArgs, world_size: int) -> None:
    """Refuse, at start, a dataset too small for one batch per process (names the field)."""
    train_idx, _ = split_episodes(expert.dones, args.validation_fraction)
    per_process = len(train_idx) // world_size
    if per_process < max(1, args.batch_size // world_size):
        raise ValueError(
            f"spec.hyperparameters.batchSize: {args.batch_size} is more than the "
            f"{len(train_idx)} training transitions of spec.expertData allow "
            f"({world_size} process(es), validationFraction {args.validation_fraction})"
        )


def _tensors(expert: Demonstrations, discrete: bool, device: torch.device) -> Any:
    obs = torch.as_tensor(expert.obs, dtype=torch.float32, device=device)
    obs = obs.reshape(len(obs), -1)  # the Agent sees flat observations, as PPO's rollouts do
    dtype = torch.int64 if discrete else torch.float32
    return obs, torch.as_tensor(expert.actions, dtype=dtype, device=device)


def validate(agent: Agent, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, float]:
    """Validation loss (and accuracy, for discrete actions) of the greedy policy."""
    with torch.no_grad():
        out = agent.actor(obs).float()
        stats = {"val_loss": bc_loss(out, actions, agent.discrete).item()}
        if agent.discrete:
            stats["val_accuracy"] = (out.argmax(-1) == actions).float().mean().item()
    return stats


def train(
    envs: Any,
    args: BCArgs,
    total_steps: int,
    device: torch.device,
    *,
    expert: Demonstrations,
    state: TrainState | None = None,
    on_update: Callable[[int, dict[str, float]], None] = lambda _s, _m: None,
    on_checkpoint: Callable[[TrainState], None] = lambda _s: None,
    checkpoint_every: int | None = None,
) -> TrainState:
    """Clone ``expert`` until ``total_steps`` transitions are learnt from (from ``state.step``).

    Every process calls this under torchrun; ``on_update`` and ``on_checkpoint`` are called on
    all of them (``run.py`` makes them no-ops off rank 0).
    """
    rank, world_size = world()
    if state is None:
        state = new_state(envs, args, device)
    agent, optimizer, scaler = state.agent, state.optimizer, state.scaler
    obs, actions = _tensors(expert, agent.discrete, device)
    train_idx, val_idx = split_episodes(expert.dones, args.validation_fraction)
    val_idx = val_idx[:MAX_VALIDATION]

    per_process = max(1, args.batch_size // world_size)
    global_batch = per_process * world_size
    # DistributedSampler only needs a length; it shuffles per epoch (same on every rank, from
    # DATA_SEED + epoch) and deals each rank its own equal slice.
    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(train_idx)),  # type: ignore[arg-type]
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=DATA_SEED,
        drop_last=True,
    )
    updates_per_epoch = len(sampler) // per_process
    total_updates = total_steps // global_batch
    if args.epochs and args.epochs * updates_per_epoch < total_updates:
        total_updates = args.epochs * updates_per_epoch
        log.info(
            "epochs %d over %d training transitions end the run at step %d, before totalSteps",
            args.epochs,
            len(train_idx),
            total_updates * global_batch,
        )
    log.info(
        "%d gradient steps of %d transitions (%d per process), %d per epoch; %d held out",
        total_updates,
        global_batch,
        per_process,
        updates_per_epoch,
        len(val_idx),
    )
    policy: torch.nn.Module = agent.actor
    if world_size > 1:
        # Gradients are averaged over the processes in backward; the initial weights are
        # broadcast from rank 0 here, so every rank starts from the same policy.
        policy = DistributedDataParallel(
            agent.actor, device_ids=[device.index] if device.type == "cuda" else None
        )
    amp = use_amp(args, device)

    epoch, order = -1, torch.empty(0, dtype=torch.int64, device=device)
    last_checkpoint = state.step
    # Sums stay on the device between rows of metrics: a .item() per step would make every
    # step wait for the GPU.
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    seen, steps_since, since = 0, 0, time.perf_counter()
    # Resuming at update u continues inside the same epoch's order, at the same batch.
    for update in range(state.step // global_batch, total_updates):
        e, k = divmod(update, updates_per_epoch)
        if e != epoch:
            epoch = e
            sampler.set_epoch(e)
            order = torch.as_tensor(train_idx[list(sampler)], device=device)
        idx = order[k * per_process : (k + 1) * per_process]
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = policy(obs[idx])
        loss = bc_loss(out.float(), actions[idx], agent.discrete)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        state.step += global_batch
        steps_since += global_batch

        loss_sum += loss.detach() * len(idx)
        seen += len(idx)
        if agent.discrete:
            correct += (out.argmax(-1) == actions[idx]).sum()
        if (update + 1) % args.log_interval == 0 or update + 1 == total_updates:
            stats = {"bc_loss": loss_sum.item() / seen}
            if agent.discrete:
                stats["accuracy"] = correct.item() / seen
            if rank == 0 and len(val_idx):
                stats.update(validate(agent, obs[val_idx], actions[val_idx]))
            stats["sps"] = steps_since / (time.perf_counter() - since)
            on_update(state.step, stats)
            loss_sum.zero_()
            correct.zero_()
            seen, steps_since, since = 0, 0, time.perf_counter()
        if checkpoint_every and state.step - last_checkpoint >= checkpoint_every:
            last_checkpoint = state.step
            on_checkpoint(state)
    return state


def evaluate(
    state: TrainState, env: Any, episodes: int, seed: int, device: torch.device
) -> list[tuple[float, dict[str, Any]]]:
    """(return, last info) of ``episodes`` greedy episodes on a single environment."""
    return evaluate_agent(state.agent, env, episodes, seed, device)
