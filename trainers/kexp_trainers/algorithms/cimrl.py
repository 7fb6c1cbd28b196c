"""CIMRL's RL phase: PPO fine-tuning of a BC policy, held near the expert early on.

CIMRL (combining imitation and reinforcement learning for driving) runs in two experiments:
the BC phase is the BC algorithm (template ``bc-highway``), and this phase starts from its
checkpoint, which the operator resolves from ``spec.initFrom`` and passes as
``$KEXP_INIT_CHECKPOINT`` (``run.py`` refuses a CIMRL run without one, naming spec.initFrom).

The RL phase is PPO on the environment's reward plus an imitation term on
``spec.expertData``: ``bc_weight(step) * bc_loss`` is added to every minibatch's loss
(``ppo.train``'s ``extra_loss`` hook), with the weight falling linearly from ``bcWeight`` to 0
over ``bcAnneal`` environment steps. Early updates, made with a critic that has not learnt
anything yet, would otherwise pull the policy away from the expert's behaviour before RL can
improve on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from kexp_trainers.algorithms import ppo
from kexp_trainers.algorithms.common import args_from_hyperparameters, bc_loss
from kexp_trainers.algorithms.ppo import PPOArgs
from kexp_trainers.runtime.datasets import Demonstrations

METRICS = (*ppo.METRICS, "bc_loss", "bc_weight")

#: This phase only makes sense from a BC (or PPO) policy: run.py enforces spec.initFrom.
REQUIRES_INIT_CHECKPOINT = True


@dataclass(frozen=True)
class CIMRLArgs(PPOArgs):
    """PPO's hyperparameters and the imitation term's."""

    #: Weight of the imitation (BC) loss at the start of fine-tuning.
    bc_weight: float = 0.1
    #: Environment steps over which the weight falls linearly to 0; 0 means the whole run.
    bc_anneal: int = 0
    #: Expert transitions per minibatch for the imitation term; 0 means batchSize.
    bc_batch_size: int = 0

    @classmethod
    def from_hyperparameters(cls, hp: Mapping[str, Any]) -> CIMRLArgs:
        """Read camelCase spec.hyperparameters; unknown keys are refused, naming the field."""
        return args_from_hyperparameters(cls, hp, "CIMRL")


def bc_weight_at(step: int, weight: float, anneal: int) -> float:
    """The imitation term's weight at ``step``: ``weight`` at step 0, falling linearly to 0
    at step ``anneal`` (at least 1) and staying 0 after it."""
    return weight * max(0.0, 1.0 - step / max(anneal, 1))


TrainState = ppo.TrainState
new_state = ppo.new_state
state_dict = ppo.state_dict
load_state = ppo.load_state
warm_start = ppo.warm_start
evaluate = ppo.evaluate


def train(
    envs: Any,
    args: CIMRLArgs,
    total_steps: int,
    device: torch.device,
    *,
    expert: Demonstrations,
    state: ppo.TrainState | None = None,
    on_update: Callable[[int, dict[str, float]], None] = lambda _s, _m: None,
    on_checkpoint: Callable[[ppo.TrainState], None] = lambda _s: None,
    checkpoint_every: int | None = None,
) -> ppo.TrainState:
    """Fine-tune until ``total_steps`` environment steps (counting from ``state.step``).

    ``state`` is the warm-started policy (or a resumed checkpoint of this run).
    """
    obs = torch.as_tensor(expert.obs, dtype=torch.float32, device=device)
    obs = obs.reshape(len(obs), -1)
    discrete = expert.action_space.get("type") == "discrete"
    actions = torch.as_tensor(
        expert.actions, dtype=torch.int64 if discrete else torch.float32, device=device
    )
    anneal = args.bc_anneal or total_steps
    batch = args.bc_batch_size or args.batch_size

    def imitation(agent: ppo.Agent, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        weight = bc_weight_at(step, args.bc_weight, anneal)
        idx = torch.randint(len(obs), (batch,), device=device)
        # Past the annealing the term no longer trains, but bc_loss still shows how far RL
        # has taken the policy from the expert.
        with torch.set_grad_enabled(weight > 0):
            loss = bc_loss(agent.actor(obs[idx]), actions[idx], agent.discrete)
        return weight * loss, {"bc_loss": loss.item(), "bc_weight": weight}

    return ppo.train(
        envs,
        args,
        total_steps,
        device,
        state=state,
        on_update=on_update,
        on_checkpoint=on_checkpoint,
        checkpoint_every=checkpoint_every,
        extra_loss=imitation,
    )
