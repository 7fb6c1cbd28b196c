"""Learning evidence for imitation: BC on highway-fast-v0 from kexp's rule-based expert.

The trainer issue's bar: BC reaches >= 80% of the expert's PDM score. Same code paths as
``kexp_trainers.run`` (the dataset recorder of ``python -m kexp_trainers.dataset``, BC's
``train``, evaluation on ``make_env`` and the run's scoring), minus S3; one CPU thread.
The expert and BC are evaluated on the same held-out seeds, which neither saw in training.

    .venv/bin/python -m bench.learning_bc   # 400 episodes (about 5 minutes), then BC
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kexp_trainers.algorithms import bc
from kexp_trainers.algorithms.common import make_vector_env
from kexp_trainers.dataset import record
from kexp_trainers.envs.highway import make_env
from kexp_trainers.run import _scores
from kexp_trainers.runtime.environment import seed_everything

ENV_ID = "highway-fast-v0"
BAR = 0.8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=400, help="Expert episodes recorded.")
    parser.add_argument("--steps", type=int, default=1_000_000, help="Transitions learnt from.")
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument(
        "--explore", type=float, default=0.2, help="Noise injection while recording (DART)."
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed_everything(args.seed)

    started = time.perf_counter()
    data = record(ENV_ID, {}, args.episodes, args.seed, explore=args.explore)
    record_s = time.perf_counter() - started
    envs = make_vector_env(ENV_ID, 1, args.seed, {})
    bc_args = bc.BCArgs(learning_rate=args.lr, batch_size=args.batch_size, hidden=args.hidden)
    started = time.perf_counter()
    state = bc.train(envs, bc_args, args.steps, torch.device("cpu"), expert=data)
    train_s = time.perf_counter() - started

    # Held-out seeds: the recorder used seed..seed+episodes-1, evaluation adds 10_000.
    eval_seed = args.seed + 100_000
    env = make_env(ENV_ID, {}, eval_seed)
    bc_scores = _scores(bc.evaluate(state, env, args.eval_episodes, eval_seed, torch.device("cpu")))
    expert = record(ENV_ID, {}, args.eval_episodes, eval_seed + 10_000).expert_scores
    ratio = bc_scores["pdm_score"] / expert["pdm_score"]
    print(
        f"BC on {ENV_ID}: {args.episodes} expert episodes ({data.transitions} transitions, "
        f"recorded in {record_s:.0f}s), {args.steps} samples in {train_s:.0f}s"
    )
    print(f"{'':<18}{'expert':>10}{'BC':>10}")
    for key in (
        "pdm_score",
        "collision_rate",
        "ego_progress",
        "ttc_compliance",
        "comfort",
        "reward",
    ):
        print(f"{key:<18}{expert[key]:>10.3f}{bc_scores[key]:>10.3f}")
    print(f"BC / expert PDM: {ratio:.2f} (bar {BAR}: {'MET' if ratio >= BAR else 'MISSED'})")
    print(
        json.dumps(
            {
                "bench": "learning_bc",
                "env": ENV_ID,
                "expert_episodes": args.episodes,
                "explore": args.explore,
                "transitions": data.transitions,
                "steps": args.steps,
                "train_seconds": train_s,
                "expert": expert,
                "bc": bc_scores,
                "ratio": ratio,
                "met": ratio >= BAR,
            }
        )
    )


if __name__ == "__main__":
    main()
