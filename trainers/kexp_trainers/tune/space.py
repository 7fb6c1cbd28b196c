"""From ``spec.sweep`` to Ray Tune's search space, search algorithm and scheduler.

Tune compares trials on two numbers, both "higher is better":

- ``PROGRESS``, what schedulers (ASHA, median stopping) stop trials on while they train: the
  objective when the algorithm logs it during training (for a reward objective, the episode
  reward it logs), negated when ``spec.objective.mode`` is min; otherwise the episode reward,
  the one signal every RL algorithm logs (a pdm_score, say, is only known after evaluation).
- ``SIGNAL``, what searchers (TPE) learn from: the objective from the trial's final
  evaluation, negated for min (and during training too when the algorithm logs it).

Keeping them apart means a scheduler never compares a training reward with an evaluation
score, and a searcher never learns from a proxy.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Final

from kexp.api.validation import validate_spec
from kexp_trainers.runtime.config import ConfigError

#: What searchers maximise: the objective, higher is better (negated for mode min).
SIGNAL: Final = "kexp_signal"
#: What schedulers maximise while trials train (see the module's docstring).
PROGRESS: Final = "kexp_progress"
#: The objective's own value in a trial's report (not negated).
OBJECTIVE: Final = "kexp_objective"
#: Present (True) only in a trial's last report, the one with its final evaluation.
FINAL: Final = "kexp_final"
#: The final evaluation's scores and the trial's best checkpoint, in the last report.
EVAL: Final = "kexp_eval"
CHECKPOINT: Final = "kexp_checkpoint"
#: Objectives that the episode reward logged during training stands for.
REWARD_OBJECTIVES: Final = frozenset({"reward", "reward_mean", "episode_reward"})
#: ASHA needs a horizon; trials report once per update, far fewer times than this.
ASHA_MAX_T: Final = 100_000


def signal(value: float, mode: str) -> float:
    """The objective's value as Tune ranks it (higher is better)."""
    return -float(value) if mode == "min" else float(value)


def training_progress(stats: Mapping[str, float], metric: str, mode: str) -> float | None:
    """``PROGRESS`` of one training update: the objective if logged, else the episode reward."""
    value = training_objective(stats, metric)
    if value is not None:
        return signal(value, mode)
    if "episode_reward" in stats:
        return float(stats["episode_reward"])
    return None


def training_objective(stats: Mapping[str, float], metric: str) -> float | None:
    """The objective's value from one training update's stats, when they carry it."""
    if metric in stats:
        return float(stats[metric])
    if metric in REWARD_OBJECTIVES and "episode_reward" in stats:
        return float(stats["episode_reward"])
    return None


def _space(kind: str, value: Any, grid: bool) -> Any:
    from ray import tune

    if kind == "grid" or (kind == "choice" and grid):
        return tune.grid_search(list(value))
    if kind == "choice":
        return tune.choice(list(value))
    low, high = value
    if kind == "uniform":
        return tune.uniform(float(low), float(high))
    if kind == "logUniform":
        return tune.loguniform(float(low), float(high))
    return tune.randint(int(low), int(high))


def space_kind(space: Mapping[str, Any]) -> tuple[str, Any]:
    """(kind, value) of one parameter's space, e.g. ("logUniform", [1e-5, 1e-3])."""
    ((kind, value),) = ((k, v) for k, v in space.items() if v is not None)
    return kind, value


def param_space(sweep: Mapping[str, Any]) -> dict[str, Any]:
    """Tune's param_space: one domain per ``sweep.parameters`` entry.

    The grid search crosses choice parameters as well as grid ones.
    """
    grid = sweep.get("searchAlgorithm") == "grid"
    return {
        name: _space(*space_kind(space), grid=grid)
        for name, space in (sweep.get("parameters") or {}).items()
    }


def search_algorithm(sweep: Mapping[str, Any], seed: int, max_concurrent: int | None) -> Any:
    """The searcher, holding back trials beyond ``max_concurrent`` (None: no limit): random
    and grid sample with Tune's variant generator, tpe with Optuna (learning from ``SIGNAL``).

    The limit is the searcher's own: Tune's ``max_concurrent_trials`` ignores a variant
    generator. Both kinds come in kexp's resumable wrappers (see ``resume``): a sweep restored
    after its pod died goes on from the trials it had, not from a searcher state older than
    them.
    """
    from kexp_trainers.tune.resume import ResumableSearchGenerator, ResumableVariantGenerator

    if sweep.get("searchAlgorithm") == "tpe":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        tpe = OptunaSearch(metric=SIGNAL, mode="max", sampler=optuna.samplers.TPESampler(seed=seed))
        return ResumableSearchGenerator(
            ConcurrencyLimiter(tpe, max_concurrent) if max_concurrent else tpe
        )
    # A fixed random state makes the same spec sample the same trials.
    return ResumableVariantGenerator(random_state=seed, max_concurrent=max_concurrent or 0)


def scheduler(sweep: Mapping[str, Any]) -> Any:
    """The trial scheduler; None runs every trial to the end."""
    spec = sweep.get("scheduler") or {}
    kind = spec.get("type") or "none"
    grace = int(spec.get("gracePeriod") or 1)
    if kind == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            metric=PROGRESS,
            mode="max",
            time_attr="training_iteration",
            max_t=ASHA_MAX_T,
            grace_period=grace,
            reduction_factor=int(spec.get("reductionFactor") or 4),
        )
    if kind == "median":
        from ray.tune.schedulers import MedianStoppingRule

        return MedianStoppingRule(
            metric=PROGRESS, mode="max", time_attr="training_iteration", grace_period=grace
        )
    return None


def _samples(kind: str, value: Any) -> list[Any]:
    """Values that stand for a space in the pre-flight check."""
    if kind in ("choice", "grid"):
        return list(value)
    if kind == "randint":
        return [int(value[0]), int(value[1]) - 1]
    return [float(value[0]), float(value[1])]


def args_type(algorithm: str) -> Any:
    """The args dataclass of a built-in algorithm (``kexp_trainers.algorithms.ppo.PPOArgs``)."""
    try:
        module = importlib.import_module(f"kexp_trainers.algorithms.{algorithm.lower()}")
        return getattr(module, f"{algorithm}Args")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"spec.algorithm: {algorithm} cannot be swept by this trainer image", "spec.algorithm"
        ) from exc


def check_parameters(spec: Mapping[str, Any]) -> None:
    """Refuse, before any trial starts, a parameter the algorithm does not have or a value it
    cannot take; ConfigError names ``spec.sweep.parameters.<name>``.

    Every choice/grid value and both ends of each range go through the algorithm's own
    hyperparameter parsing and the spec's validation, so 64 trials never fail one by one on
    the same typo.
    """
    sweep = spec.get("sweep") or {}
    base = dict(spec.get("hyperparameters") or {})
    parse = args_type(str(spec.get("algorithm"))).from_hyperparameters
    try:
        parse(base)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        raise ConfigError(message, message.split(":", 1)[0]) from exc
    single = {k: v for k, v in spec.items() if k != "sweep"}
    for name, space in (sweep.get("parameters") or {}).items():
        kind, value = space_kind(space)
        for sample in _samples(kind, value):
            hyperparameters = {**base, name: sample}
            try:
                parse(hyperparameters)
                validate_spec({**single, "hyperparameters": hyperparameters})
            except (ValueError, TypeError) as exc:
                field = f"spec.sweep.parameters.{name}"
                detail = str(exc).split(": ", 1)[-1] if str(exc).startswith("spec.") else str(exc)
                raise ConfigError(f"{field}: {detail} (value {sample!r})", field) from exc
