"""The contract between the kexp operator and trainer containers: the one definition of it.

The operator renders pods from these names and trainers (kexp's own or a researcher's custom
image) read them; nothing else in kexp spells these strings out.

What a trainer gets:

- the resolved Experiment spec as YAML at ``$KEXP_CONFIG`` (a mounted ConfigMap);
- S3 credentials as files in ``$KEXP_S3_SECRET_DIR`` (one file per key of
  ``S3_SECRET_KEYS``), never as environment values;
- where to write: ``$KEXP_S3_BUCKET`` and ``$KEXP_S3_PREFIX``, i.e.
  ``s3://<bucket>/<namespace>/<experiment>/<uid>/``; the UID keeps a re-created experiment of
  the same name from ever overwriting an earlier one;
- ``$KEXP_INIT_CHECKPOINT``: an S3 URI to warm-start from (``spec.initFrom``), or unset;
- a port for Prometheus metrics, ``$KEXP_METRICS_PORT``.

What a trainer writes under its prefix: ``checkpoints/step-<N>.pt``, ``checkpoints/best.pt``,
``checkpoints/latest`` (the key of the newest step checkpoint), ``progress.json`` (heartbeat),
``metrics.csv`` (history) and ``results.json`` (final evaluation and environment report).

A sweep (``spec.sweep``) runs ``python -m kexp_trainers.tune`` instead, with the same
environment. Each trial writes the files above under ``trials/<trial>/``; the sweep keeps
Ray Tune's state under ``tune/`` (a restarted sweep resumes from it), rewrites ``sweep.json``
(every trial's state and score) while it runs, and at the end writes ``results.json`` with the
best trial's scores and checkpoints.
"""

from __future__ import annotations

from typing import Final

#: Namespace the operator and cluster-wide kexp objects live in.
SYSTEM_NAMESPACE: Final = "kexp-system"

#: Default name of the Secret that carries S3 credentials (``spec.storage.secretRef``).
DEFAULT_S3_SECRET: Final = "kexp-s3"  # noqa: S105 - a Secret object's name
#: Default bucket experiments write to (``spec.storage.bucket``).
DEFAULT_BUCKET: Final = "experiments"

#: Keys of the S3 Secret. They are the AWS SDKs' own variable names, so the same Secret also
#: works with ``envFrom`` for tools that read them, and each key becomes a file when mounted.
S3_ACCESS_KEY: Final = "AWS_ACCESS_KEY_ID"
S3_SECRET_KEY: Final = "AWS_SECRET_ACCESS_KEY"  # noqa: S105 - a key name, not a secret
S3_ENDPOINT_KEY: Final = "AWS_ENDPOINT_URL"
S3_REGION_KEY: Final = "AWS_REGION"
S3_SECRET_KEYS: Final = (S3_ACCESS_KEY, S3_SECRET_KEY, S3_ENDPOINT_KEY, S3_REGION_KEY)

#: Extended resource name of NVIDIA GPUs (the device plugin's).
GPU_RESOURCE: Final = "nvidia.com/gpu"

# ---- environment of a trainer container ---------------------------------------------------
ENV_CONFIG: Final = "KEXP_CONFIG"
ENV_EXPERIMENT: Final = "KEXP_EXPERIMENT"
ENV_NAMESPACE: Final = "KEXP_NAMESPACE"
ENV_UID: Final = "KEXP_UID"
ENV_S3_BUCKET: Final = "KEXP_S3_BUCKET"
ENV_S3_PREFIX: Final = "KEXP_S3_PREFIX"
ENV_S3_SECRET_DIR: Final = "KEXP_S3_SECRET_DIR"  # noqa: S105 - a variable's name
ENV_INIT_CHECKPOINT: Final = "KEXP_INIT_CHECKPOINT"
ENV_METRICS_PORT: Final = "KEXP_METRICS_PORT"
#: Multi-node runs: how many nodes, and each node's GPUs (processes per node).
ENV_NNODES: Final = "KEXP_NNODES"
ENV_NPROC_PER_NODE: Final = "KEXP_NPROC_PER_NODE"

# ---- mounts -------------------------------------------------------------------------------
CONFIG_DIR: Final = "/etc/kexp"
CONFIG_FILE: Final = "config.yaml"
CONFIG_PATH: Final = f"{CONFIG_DIR}/{CONFIG_FILE}"
S3_SECRET_DIR: Final = "/var/run/secrets/kexp/s3"  # noqa: S105 - a mount path

METRICS_PORT: Final = 9090
#: torchrun's rendezvous port on the rank-0 pod of a multi-node run.
RENDEZVOUS_PORT: Final = 29500

# ---- S3 layout ----------------------------------------------------------------------------
CHECKPOINTS_DIR: Final = "checkpoints"
BEST_CHECKPOINT: Final = "checkpoints/best.pt"
LATEST_POINTER: Final = "checkpoints/latest"
PROGRESS_FILE: Final = "progress.json"
METRICS_FILE: Final = "metrics.csv"
RESULTS_FILE: Final = "results.json"
#: A sweep's report: every trial's state, hyperparameters and score (``SweepReport``).
SWEEP_FILE: Final = "sweep.json"
#: Each trial's own run files live under ``trials/<trial>/``.
TRIALS_DIR: Final = "trials"
#: Ray Tune's experiment state (what ``Tuner.restore`` resumes from) lives under ``tune/``.
TUNE_DIR: Final = "tune"
#: Ray Tune's name for the sweep's experiment directory under ``tune/``.
TUNE_EXPERIMENT: Final = "sweep"


def s3_prefix(namespace: str, experiment: str, uid: str) -> str:
    """The key prefix (no bucket, trailing slash) under which one experiment writes."""
    return f"{namespace}/{experiment}/{uid}/"


def step_checkpoint(step: int) -> str:
    """Key, relative to the prefix, of the checkpoint taken at ``step``."""
    return f"{CHECKPOINTS_DIR}/step-{step}.pt"


def trial_prefix(prefix: str, trial: str) -> str:
    """The key prefix (trailing slash) of one sweep trial, under its experiment's prefix."""
    return f"{prefix}{TRIALS_DIR}/{trial}/"


def s3_uri(bucket: str, key: str) -> str:
    """``s3://bucket/key``."""
    return f"s3://{bucket}/{key}"


# ---- Prometheus metric names (``kexp_trainer_*``), labels experiment/namespace/trial ------
METRIC_LABELS: Final = ("experiment", "namespace", "trial")
METRIC_STEPS: Final = "kexp_trainer_steps_total"
METRIC_STEPS_PER_SECOND: Final = "kexp_trainer_steps_per_second"
METRIC_EPISODE_REWARD: Final = "kexp_trainer_episode_reward"
METRIC_LOSS: Final = "kexp_trainer_loss"
METRIC_EVAL_SCORE: Final = "kexp_trainer_eval_score"
METRIC_CHECKPOINT_UPLOAD_SECONDS: Final = "kexp_trainer_checkpoint_upload_seconds"
METRIC_GPU_MEMORY_BYTES: Final = "kexp_trainer_gpu_memory_bytes"

# ---- KubeRay (a sweep with spec.sweep.rayCluster runs as a RayJob) ----------------------
RAY_GROUP: Final = "ray.io"
RAY_VERSION: Final = "v1"
RAYJOB_KIND: Final = "RayJob"
RAYJOB_PLURAL: Final = "rayjobs"

# ---- labels and annotations the operator puts on objects ----------------------------------
LABEL_EXPERIMENT: Final = "kexp.io/experiment"
LABEL_ROLE: Final = "kexp.io/role"
LABEL_TAG_PREFIX: Final = "kexp.io/tag."
LABEL_TEMPLATE: Final = "kexp.io/template"
LABEL_INIT_FROM: Final = "kexp.io/init-from"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "kexp"
#: On an Experiment made by ``kexp new --from``: the Experiment whose spec it copied.
ANNOTATION_COPIED_FROM: Final = "kexp.io/copied-from"
#: Annotations with this prefix on an Experiment are copied onto its pods; the local stack's
#: simulated nodes read them (see ``kexp.dev.cluster``).
SIM_ANNOTATION_PREFIX: Final = "sim.kexp.io/"
