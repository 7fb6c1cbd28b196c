"""The sweep's driver: read the config, start (or join) Ray, run or resume the Tuner, report.

Exit codes follow the trainer's: 0 when the sweep ran and at least one trial did not fail,
1 when every trial failed (``results.json`` then carries the first error) or the sweep itself
broke, 2 when the config cannot be run (a bad parameter is named before any trial starts).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlparse

from kexp.api import contract
from kexp.api.models import Sweep
from kexp.api.reports import SweepReport
from kexp.render.sweep import local_concurrency, trial_resources, uses_ray_cluster
from kexp.storage.s3 import S3Credentials, read_object, s3_client
from kexp_trainers.runtime.config import ConfigError, RunConfig, load_config
from kexp_trainers.runtime.environment import environment_report
from kexp_trainers.runtime.reporting import RunReporter, utc_now
from kexp_trainers.runtime.s3 import credentials_from_env
from kexp_trainers.tune.metrics import SweepMetrics
from kexp_trainers.tune.report import (
    FINISHED,
    SweepReportCallback,
    SweepSettings,
    put_json,
    sweep_results,
)
from kexp_trainers.tune.space import (
    check_parameters,
    param_space,
    scheduler,
    search_algorithm,
)
from kexp_trainers.tune.trial import SweepBase, run_trial

log = logging.getLogger("kexp_trainers.tune")
#: Ray's shared-memory object store in a one-pod sweep; trials pass it almost nothing.
OBJECT_STORE_BYTES: Final = 200 * 1024 * 1024


@dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep here; the defaults are the pod's."""

    #: Seconds between two writes of sweep.json while trials change.
    report_interval_s: float = 5.0
    #: Where to serve the trials' metrics (0: not served).
    metrics_port: int = 0
    #: Overrides the CPUs a local Ray gets (else: one trial's times maxConcurrentTrials).
    num_cpus: int | None = None


def tune_filesystem(creds: S3Credentials) -> Any:
    """A pyarrow S3 filesystem for Tune's state, with no keys inside it.

    Tune pickles its storage filesystem into the experiment state it writes to S3, so the
    keys go to this process's environment (where the AWS SDK under pyarrow finds them), never
    into the object.
    """
    from pyarrow import fs

    os.environ[contract.S3_ACCESS_KEY] = creds.access_key
    os.environ[contract.S3_SECRET_KEY] = creds.secret_key
    url = urlparse(creds.endpoint)
    return fs.S3FileSystem(endpoint_override=url.netloc, scheme=url.scheme, region=creds.region)


def start_ray(spec: dict[str, Any], options: SweepOptions) -> None:
    """Join the RayJob's cluster (``RAY_ADDRESS``), or start a local Ray sized for the pod."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    per_trial = trial_resources(spec)
    trials = local_concurrency(spec)
    cpus = options.num_cpus or max(1, math.ceil(per_trial["cpu"] * trials))
    ray.init(
        num_cpus=cpus,
        num_gpus=int(per_trial["gpu"] * trials),
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=True,
    )


def _trial_name(trial: Any) -> str:
    # Tune's trial id is unique per sweep and survives a restore: it names the S3 folder.
    return str(trial.trial_id)


def build_tuner(
    config: RunConfig, creds: S3Credentials, options: SweepOptions
) -> tuple[Any, SweepReportCallback | None]:
    """A new Tuner, or the one restored from the sweep's Tune state in S3.

    Returns the callback it reports through when the Tuner is new; a restored Tuner brings
    back its own (unpickled) copy.
    """
    from ray import tune

    spec = config.spec
    sweep = spec["sweep"]
    storage = tune_filesystem(creds)
    root = f"{config.bucket}/{config.prefix}{contract.TUNE_DIR}"
    path = f"{root}/{contract.TUNE_EXPERIMENT}"
    resuming = tune.Tuner.can_restore(path, storage_filesystem=storage)
    base = SweepBase(
        name=config.name,
        namespace=config.namespace,
        uid=config.uid,
        spec=spec,
        bucket=config.bucket,
        prefix=config.prefix,
        init_checkpoint=os.environ.get(contract.ENV_INIT_CHECKPOINT) or config.init_checkpoint,
        resumed=resuming,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base),
        {k: v for k, v in trial_resources(spec).items() if v},
    )
    if resuming:
        log.info("resuming the sweep from its Tune state at s3://%s", path)
        restored = tune.Tuner.restore(
            path,
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
            storage_filesystem=storage,
        )
        return restored, None
    callback = SweepReportCallback(
        SweepSettings(
            name=config.name,
            namespace=config.namespace,
            bucket=config.bucket,
            prefix=config.prefix,
            metric=base.metric,
            mode=base.mode,
            planned=Sweep.model_validate(sweep).planned_trials(),
            interval_s=options.report_interval_s,
            metrics_port=options.metrics_port,
        )
    )
    concurrency = sweep.get("maxConcurrentTrials")
    if not uses_ray_cluster(spec):
        concurrency = local_concurrency(spec)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(sweep),
        # No metric here: the scheduler and the searcher each name their own (see space).
        tune_config=tune.TuneConfig(
            search_alg=search_algorithm(sweep, config.seed, concurrency),
            scheduler=scheduler(sweep),
            num_samples=int(sweep.get("numSamples") or 1),
            # Short trials are dominated by worker start-up (importing torch) otherwise.
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=contract.TUNE_EXPERIMENT,
            storage_path=root,
            storage_filesystem=storage,
            callbacks=[callback],
            # A crashed trial is recorded with its error; it does not sink the sweep.
            failure_config=tune.FailureConfig(max_failures=0),
            # Tune's tables per result drown the log; the callback logs one line per trial.
            verbose=0,
        ),
    )
    return tuner, callback


def _fail(
    client: Any, bucket: str, prefix: str, message: str, field: str | None, seed: int | None
) -> None:
    """Record a sweep that could not run: results.json with the reason, sweep.json failed."""
    RunReporter(client, bucket, prefix, total_steps=1).fail(
        message, field=field, environment=environment_report(seed, None)
    )
    existing = read_object(client, bucket, prefix + contract.SWEEP_FILE)
    report: SweepReport | None = None
    if existing is not None:
        try:
            report = SweepReport.model_validate_json(existing)
        except ValueError:
            report = None
    if report is None:
        report = SweepReport(outcome="failed", metric="", updated_at=utc_now())
    report = report.model_copy(
        update={"outcome": "failed", "error": message, "updated_at": utc_now()}
    )
    put_json(client, bucket, prefix + contract.SWEEP_FILE, report.to_json())


def run_sweep(config: RunConfig, creds: S3Credentials, options: SweepOptions | None = None) -> int:
    """Run (or resume) the sweep ``config`` describes; its exit code."""
    options = options or SweepOptions()
    client = s3_client(creds)
    if not config.spec.get("sweep"):
        message = "spec.sweep: not set; run kexp_trainers.run instead"
        _fail(client, config.bucket, config.prefix, message, "spec.sweep", config.seed)
        return 2
    # Results may lack the objective (a trial's first updates, a failure); Tune would refuse.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune's own per-trial files (result.json, progress.csv, TensorBoard events) repeat what
    # each kexp trial writes under trials/<trial>/, and syncing them to S3 with Tune's state
    # grows with every trial; Tune's state (what a restore needs) does not need them.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kexp-preflight") as pool:
        # The check imports the algorithm (and torch): about as long as Ray takes to start,
        # so both happen at once.
        checked = pool.submit(check_parameters, config.spec)
        start_ray(config.spec, options)
        try:
            checked.result()
        except ConfigError as exc:
            log.error("%s", exc)
            _fail(client, config.bucket, config.prefix, str(exc), exc.field, config.seed)
            tune_shutdown()
            return 2
    try:
        tuner, callback = build_tuner(config, creds, options)
        if callback is not None:
            callback.metrics()  # serve the scrape target before the first result
        log.info(
            "sweep %s/%s: %s search, scheduler %s, writing under s3://%s/%s",
            config.namespace,
            config.name,
            config.spec["sweep"].get("searchAlgorithm") or "random",
            (config.spec["sweep"].get("scheduler") or {}).get("type") or "none",
            config.bucket,
            config.prefix,
        )
        grid = tuner.fit()
        log.info("tuner finished: %d trial(s)", len(grid))
        report = FINISHED.pop(config.prefix, None)
        if report is None:
            raise RuntimeError(f"the sweep ended without a final report ({len(grid)} results)")
    except Exception as exc:
        log.exception("the sweep failed")
        _fail(
            client, config.bucket, config.prefix, f"{type(exc).__name__}: {exc}", None, config.seed
        )
        return 1
    finally:
        tune_shutdown()
    put_json(client, config.bucket, config.prefix + contract.SWEEP_FILE, report.to_json())
    commit = (config.spec.get("source") or {}).get("commit")
    results = sweep_results(report, environment_report(config.seed, commit))
    put_json(client, config.bucket, config.prefix + contract.RESULTS_FILE, results.to_json())
    counts = {
        s: sum(1 for t in report.trials if t.state == s)
        for s in ("completed", "stoppedEarly", "failed")
    }
    log.info("sweep done: %d trials %s; outcome %s", len(report.trials), counts, report.outcome)
    if options.metrics_port:
        # The last trials' scores were set moments ago: let a scrape read them first.
        SweepMetrics.shared(
            config.name, config.namespace, options.metrics_port
        ).scrapes.wait_for_next()
    return 1 if report.outcome == "failed" else 0


def tune_shutdown() -> None:
    """Stop the Ray this process started or joined."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def main() -> int:
    """Run the configured sweep (see the module's docstring for exit codes)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    creds = credentials_from_env()
    client = s3_client(creds)
    try:
        config = load_config()
    except ConfigError as exc:
        prefix = os.environ.get(contract.ENV_S3_PREFIX)
        if prefix:
            bucket = os.environ.get(contract.ENV_S3_BUCKET, contract.DEFAULT_BUCKET)
            _fail(client, bucket, prefix, str(exc), exc.field, None)
        log.error("%s", exc)
        return 2
    port = int(os.environ.get(contract.ENV_METRICS_PORT, "0") or 0)
    return run_sweep(config, creds, SweepOptions(metrics_port=port))


if __name__ == "__main__":
    sys.exit(main())
