"""Learning evidence: train an algorithm on a classic-control task and evaluate it greedily.

The trainer issue's bars: PPO solves CartPole-v1 (mean return >= 475), SAC reaches >= -200 on
Pendulum-v1. Same code paths as ``kexp_trainers.run`` (minus S3), one CPU thread.

    .venv/bin/python -m bench.learning ppo   # CartPole-v1, 60k steps, about 15 s
    .venv/bin/python -m bench.learning sac   # Pendulum-v1, 12k steps, about 2-3 minutes
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import gymnasium as gym
import torch

from kexp_trainers.algorithms import ppo, sac
from kexp_trainers.algorithms.common import make_vector_env
from kexp_trainers.runtime.environment import seed_everything

RUNS = {
    "ppo": ("CartPole-v1", 4, 60_000, 475.0, lambda: ppo.PPOArgs(batch_size=128), ppo),
    "sac": ("Pendulum-v1", 1, 12_000, -200.0, lambda: sac.SACArgs(learning_starts=1000), sac),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algorithm", choices=sorted(RUNS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args()
    env_id, num_envs, steps, bar, make_args, module = RUNS[args.algorithm]
    torch.set_num_threads(1)
    seed_everything(args.seed)
    envs = make_vector_env(env_id, num_envs, args.seed, {})
    started = time.perf_counter()
    state = module.train(envs, make_args(), steps, torch.device("cpu"))
    seconds = time.perf_counter() - started
    returns = [
        r
        for r, _ in module.evaluate(
            state, gym.make(env_id), args.episodes, args.seed, torch.device("cpu")
        )
    ]
    mean = statistics.mean(returns)
    print(
        f"{args.algorithm.upper()} on {env_id}: {steps} steps in {seconds:.0f}s; greedy "
        f"evaluation over {args.episodes} episodes: mean {mean:.1f} "
        f"(std {statistics.pstdev(returns):.1f}); bar {bar}: "
        f"{'MET' if mean >= bar else 'MISSED'}"
    )
    print(
        json.dumps(
            {
                "bench": "learning",
                "algorithm": args.algorithm,
                "env": env_id,
                "steps": steps,
                "seconds": seconds,
                "mean_return": mean,
                "returns": returns,
                "bar": bar,
                "met": mean >= bar,
            }
        )
    )


if __name__ == "__main__":
    main()
