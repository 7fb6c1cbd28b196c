"""One sweep trial: a single kexp run with the trial's hyperparameters, reporting to Tune.

The trial calls the same ``train_run`` as a single Experiment, with the same checkpoint store,
reporter and metrics, under its own prefix ``<prefix>/trials/<trial>/``. Its reporter also
hands every training update and the final evaluation to Tune (``tune.report``), which is what
schedulers stop trials on. A trial that is restarted (its pod or worker died, or the sweep was
restored) resumes from the latest checkpoint under its prefix, as a single run does.
"""

from __future__ import annotations

import copy
import functools
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minio import Minio

from kexp.api import contract
from kexp.api.reports import CheckpointsReport, EnvironmentReport, ResultsReport
from kexp.api.validation import validate_spec
from kexp.storage.s3 import S3Credentials, s3_client
from kexp_trainers.runtime.checkpoints import CheckpointStore
from kexp_trainers.runtime.config import ConfigError, RunConfig
from kexp_trainers.runtime.environment import environment_report, seed_everything
from kexp_trainers.runtime.metrics import TrainerMetrics
from kexp_trainers.runtime.reporting import RunReporter
from kexp_trainers.runtime.s3 import credentials_from_env
from kexp_trainers.tune.space import (
    CHECKPOINT,
    EVAL,
    FINAL,
    OBJECTIVE,
    PROGRESS,
    SIGNAL,
    signal,
    training_objective,
    training_progress,
)

log = logging.getLogger("kexp_trainers.tune")
#: Seconds a stopped trial waits for its last checkpoint upload before its thread ends.
STOP_UPLOAD_WAIT_S = 10.0


@dataclass(frozen=True)
class SweepBase:
    """What every trial of one sweep shares: who it is, its resolved spec, where it writes."""

    name: str
    namespace: str
    uid: str
    spec: dict[str, Any]
    bucket: str
    prefix: str
    init_checkpoint: str | None = None
    #: The sweep was restored from its Tune state, so its trials may have checkpoints.
    resumed: bool = False

    @property
    def metric(self) -> str:
        return str((self.spec.get("objective") or {}).get("metric") or "pdm_score")

    @property
    def mode(self) -> str:
        return str((self.spec.get("objective") or {}).get("mode") or "max")


def plain(value: Any) -> bool | int | float | str:
    """A hyperparameter value as JSON knows it (Tune may hand over NumPy scalars)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def trial_spec(spec: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The spec one trial runs: the sweep's, its hyperparameters overridden, without the sweep.

    ConfigError names the hyperparameter when a sampled value is not valid for a run.
    """
    merged = copy.deepcopy(dict(spec))
    merged.pop("sweep", None)
    merged["hyperparameters"] = {
        **(merged.get("hyperparameters") or {}),
        **{k: plain(v) for k, v in config.items()},
    }
    try:
        return validate_spec(merged)
    except ValueError as exc:
        message = str(exc)
        raise ConfigError(message, message.split(":", 1)[0]) from exc


class _FreshTrialStore(CheckpointStore):
    """The checkpoint store of a trial of a sweep that was not restored.

    Tune's trial ids are new in every sweep, so there is nothing under the trial's prefix
    to resume from: the two S3 requests of that lookup are saved on every trial.
    """

    def latest(self) -> tuple[int, str] | None:
        return None


@functools.cache
def _client(creds: S3Credentials) -> Minio:
    # One client per worker process: a reused actor runs many trials, and they can share
    # its connections.
    return s3_client(creds)


class TuneReporter(RunReporter):
    """A run's reporter that also reports each update and the final evaluation to Tune."""

    def __init__(
        self,
        *args: Any,
        metric: str,
        mode: str,
        report: Callable[[dict[str, Any]], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.metric = metric
        self.mode = mode
        self._report = report

    def _with_objective(self, result: dict[str, Any], value: float | None) -> dict[str, Any]:
        if value is not None:
            result[OBJECTIVE] = value
            result[SIGNAL] = signal(value, self.mode)
        return result

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        super().log(step, metrics)
        result: dict[str, Any] = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float)
        }
        result["step"] = step
        progress = training_progress(metrics, self.metric, self.mode)
        if progress is not None:
            result[PROGRESS] = progress
        self._report(self._with_objective(result, training_objective(metrics, self.metric)))

    def finish(
        self,
        scores: Mapping[str, float],
        *,
        checkpoints: CheckpointsReport,
        environment: EnvironmentReport,
    ) -> ResultsReport:
        report = super().finish(scores, checkpoints=checkpoints, environment=environment)
        result: dict[str, Any] = {
            # A trial resumed from its final checkpoint logs no update: its step is the
            # checkpoint's.
            "step": max(report.step, checkpoints.best_step or 0),
            FINAL: True,
            EVAL: {k: float(v) for k, v in scores.items()},
        }
        if checkpoints.best:
            result[CHECKPOINT] = checkpoints.best
        value = scores.get(self.metric)
        self._report(self._with_objective(result, None if value is None else float(value)))
        return report


def run_trial(config: dict[str, Any], base: SweepBase) -> None:
    """The Tune trainable: train one trial of the sweep ``base``."""
    from ray import tune

    from kexp_trainers.run import train_run

    if not logging.getLogger().handlers:
        # A Ray worker has no logging set up; the trainer's progress lines should reach the log.
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    trial = tune.get_context().get_trial_id()
    prefix = contract.trial_prefix(base.prefix, trial)
    client = _client(credentials_from_env())
    store_type = CheckpointStore if base.resumed else _FreshTrialStore
    store = store_type(client, base.bucket, prefix)
    spec = trial_spec(base.spec, config)
    run = RunConfig(
        name=base.name,
        namespace=base.namespace,
        uid=base.uid,
        spec=spec,
        bucket=base.bucket,
        prefix=prefix,
        init_checkpoint=base.init_checkpoint,
    )
    reporter = TuneReporter(
        client,
        base.bucket,
        prefix,
        run.total_steps,
        metric=base.metric,
        mode=base.mode,
        report=tune.report,
    )
    # Not served here: the sweep's driver exports every trial's metrics on one port.
    metrics = TrainerMetrics(base.name, base.namespace, trial)
    seed_everything(run.seed)
    log.info("trial %s: %s", trial, ", ".join(f"{k}={plain(v)}" for k, v in config.items()))
    with tempfile.TemporaryDirectory(prefix=f"kexp-trial-{trial}-") as tmp:
        try:
            train_run(run, store, reporter, metrics, Path(tmp))
        except ConfigError as exc:
            reporter.fail(str(exc), field=exc.field, environment=environment_report(run.seed, None))
            raise
        except Exception as exc:
            reporter.fail(
                f"{type(exc).__name__}: {exc}", environment=environment_report(run.seed, None)
            )
            raise
        except BaseException:
            # Tune stops a trial by raising SystemExit in it at its next report: let the
            # checkpoint being uploaded land, then go.
            try:
                store.wait(timeout_s=STOP_UPLOAD_WAIT_S)
            except Exception:
                log.warning("trial %s stopped before its last checkpoint was uploaded", trial)
            raise
