"""The kexp API (group ``kexp.io``, version ``v1alpha1``): the one definition of it.

These pydantic models are the single source of truth for the ``Experiment`` and
``ExperimentTemplate`` custom resources. ``kexp.api.crd`` generates the CRDs in ``crds/`` from
them, so a field's ``description`` here is what ``kubectl explain`` prints, and every bound that
the API server can check (types, enums, ranges, patterns, CEL rules attached through
``json_schema_extra``) is stated once, here, and enforced twice: by ``kubectl apply`` and by
``model_validate`` in the operator and the CLI.

On the wire (and in ``model_dump(by_alias=True)``) names are camelCase; in Python they are
snake_case, and models accept either. Spec models refuse unknown fields, so a typo such as
``learningrate`` at the top of a spec is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kexp.api import contract

# A JSON Schema node as pydantic's json_schema_extra hands it over.
JsonDict = dict[str, Any]

GROUP: Final = "kexp.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

EXPERIMENT_KIND: Final = "Experiment"
EXPERIMENT_PLURAL: Final = "experiments"
EXPERIMENT_SINGULAR: Final = "experiment"
EXPERIMENT_SHORT_NAMES: Final = ("exp",)

TEMPLATE_KIND: Final = "ExperimentTemplate"
TEMPLATE_PLURAL: Final = "experimenttemplates"
TEMPLATE_SINGULAR: Final = "experimenttemplate"
TEMPLATE_SHORT_NAMES: Final = ("expt",)

CATEGORIES: Final = ("kexp",)

#: Spec fields that may change after an Experiment is submitted; every other one is immutable
#: (enforced by CEL transition rules), so a run's recorded configuration is the one it ran.
MUTABLE_SPEC_FIELDS: Final = frozenset({"description", "tags"})

#: Spec fields that describe a run without changing what it computes; ``config_hash`` ignores
#: them so that two runs of the same configuration share a hash.
UNHASHED_SPEC_FIELDS: Final = frozenset({"description", "tags", "templateRef"})

# Object names, as the API server checks them (RFC 1123 subdomain).
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
TAG_PATTERN: Final = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$"
# A tag is mirrored into the label key "kexp.io/tag.<tag>", whose name part is capped at 63
# characters; "tag." takes 4 of them.
TAG_MAX_LENGTH: Final = 59
# The API server's own pattern for resource.Quantity (what controller-gen emits for it).
QUANTITY_PATTERN: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
S3_URI_PATTERN: Final = r"^s3://[^/\s]+(/\S*)?$"
GIT_COMMIT_PATTERN: Final = r"^[0-9a-f]{40}$"
ENV_VAR_NAME_PATTERN: Final = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
S3_BUCKET_PATTERN: Final = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
CONDITION_TYPE_PATTERN: Final = r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$"
CONDITION_REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

# Bounds on strings, lists and maps. Besides refusing absurd input, they keep the estimated
# cost of the CEL rules within the API server's budget: an unbounded value is costed as if it
# filled a whole request.
NAME_MAX: Final = 253
TEXT_MAX: Final = 1024
DESCRIPTION_MAX: Final = 4096
MESSAGE_MAX: Final = 32768
MAX_TAGS: Final = 32
MAX_SWEEP_PARAMETERS: Final = 32
MAX_PARAMETER_VALUES: Final = 256
MAX_HYPERPARAMETERS: Final = 128
MAX_ARGS: Final = 256
MAX_ENV: Final = 128
MAX_CONDITIONS: Final = 32
MAX_LEADERBOARD: Final = 20
#: Trials one sweep may plan (numSamples times the grid's combinations).
MAX_TRIALS: Final = 10000

DNSName = Annotated[str, StringConstraints(max_length=NAME_MAX, pattern=DNS_SUBDOMAIN_PATTERN)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX)]
Text = Annotated[str, StringConstraints(max_length=TEXT_MAX)]
Tag = Annotated[str, StringConstraints(max_length=TAG_MAX_LENGTH, pattern=TAG_PATTERN)]
S3URI = Annotated[str, StringConstraints(max_length=TEXT_MAX, pattern=S3_URI_PATTERN)]
GitCommit = Annotated[str, StringConstraints(max_length=40, pattern=GIT_COMMIT_PATTERN)]


def _quantity_text(value: Any) -> Any:
    # YAML turns `cpu: 4` into an int; Kubernetes accepts both spellings of a quantity.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


#: A Kubernetes resource quantity ("500m", "4", "16Gi"); an integer is accepted as its string.
Quantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    StringConstraints(max_length=64, pattern=QUANTITY_PATTERN),
    # The anyOf is the one a structural schema allows beside x-kubernetes-int-or-string; without
    # it the API server would accept any JSON value there.
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": 64,
            "x-kubernetes-int-or-string": True,
        }
    ),
]

#: One value of a free-form map or list: a number, a string or a boolean. The CRD cannot say
#: "one of these scalar types" structurally, so there it is any JSON value and pydantic checks.
Scalar = Annotated[
    bool | int | float | str, WithJsonSchema({"x-kubernetes-preserve-unknown-fields": True})
]

#: A free-form object the operator passes through without interpreting.
FreeForm = Annotated[
    dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})
]


def _check_hyperparameters(values: dict[str, bool | int | float | str]) -> dict[str, Any]:
    # bool is an int to Python, but `learningRate: true` is a mistake, not 1.
    lr = values.get("learningRate")
    if lr is not None and (isinstance(lr, bool | str) or not lr > 0):
        raise ValueError(f"hyperparameters.learningRate must be a number > 0, got {lr!r}")
    batch = values.get("batchSize")
    if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch <= 0):
        raise ValueError(f"hyperparameters.batchSize must be an integer > 0, got {batch!r}")
    return values


#: Hyperparameters: any names, scalar values; the two every algorithm shares are checked.
Hyperparameters = Annotated[
    dict[str, Scalar],
    AfterValidator(_check_hyperparameters),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_HYPERPARAMETERS,
            "properties": {
                "learningRate": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "Optimizer learning rate; must be > 0.",
                },
                "batchSize": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Minibatch size in samples; an integer >= 1.",
                },
            },
            "x-kubernetes-preserve-unknown-fields": True,
        }
    ),
]


def _rule(
    rule: str, message: str, field_path: str | None = None, reason: str | None = None
) -> JsonDict:
    """One ``x-kubernetes-validations`` entry."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def _validations(*rules: JsonDict) -> JsonDict:
    return {"x-kubernetes-validations": list(rules)}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, JSON types, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class _StatusModel(_Model):
    # Status is written by the operator and read back by any version of it; an older reader
    # must not fail on a field a newer writer added.
    model_config = ConfigDict(extra="ignore")


# ---- enums ----------------------------------------------------------------------------------


class Algorithm(StrEnum):
    """The training algorithm."""

    PPO = "PPO"
    SAC = "SAC"
    BC = "BC"
    GAIL = "GAIL"
    CIMRL = "CIMRL"
    CUSTOM = "Custom"


class ObjectiveMode(StrEnum):
    """Whether a higher or a lower objective value is better."""

    MIN = "min"
    MAX = "max"


class CheckpointChoice(StrEnum):
    """Which checkpoint of another experiment to start from."""

    BEST = "best"
    LATEST = "latest"


class SearchAlgorithm(StrEnum):
    """How a sweep picks the next trial's hyperparameters."""

    RANDOM = "random"
    GRID = "grid"
    TPE = "tpe"


class SchedulerType(StrEnum):
    """Trial scheduler: whether and how a sweep stops unpromising trials early."""

    NONE = "none"
    ASHA = "asha"
    MEDIAN = "median"


class Phase(StrEnum):
    """Where an Experiment is in its life."""

    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    EVALUATING = "Evaluating"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ConditionStatus(StrEnum):
    """Status of a condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


# ---- spec -----------------------------------------------------------------------------------


class Environment(_Model):
    """The environment the agent is trained and evaluated in."""

    id: Name | None = Field(
        default=None,
        description="Environment id as registered with gymnasium, e.g. highway-fast-v0 or "
        "CartPole-v1. Required unless a template provides it (or the algorithm is Custom).",
    )
    num_envs: int = Field(
        default=1, ge=1, le=1024, description="Number of environment copies stepped in parallel."
    )
    config: FreeForm = Field(
        default_factory=dict,
        description="Environment-specific configuration, passed to the environment as given; "
        "kexp does not interpret it.",
    )


class Training(_Model):
    """How long to train, and how often to checkpoint and evaluate on the way."""

    total_steps: int | None = Field(
        default=None,
        ge=1,
        description="Environment steps to train for, in total. Required unless a template "
        "provides it.",
    )
    seed: int = Field(
        default=0,
        ge=0,
        description="Random seed of the run; the same seed and spec reproduce a run.",
    )
    checkpoint_every: int | None = Field(
        default=None,
        ge=1,
        description="Steps between checkpoints. Unset: the trainer's default. A preempted or "
        "retried pod resumes from the latest checkpoint.",
    )
    eval_every: int | None = Field(
        default=None,
        ge=1,
        description="Steps between intermediate evaluations. Unset: evaluate only at the end.",
    )


class CsvAggregate(StrEnum):
    """How the rows of a custom evaluator's CSV become one score per column."""

    MEAN = "mean"
    LAST = "last"
    MIN = "min"
    MAX = "max"


#: A key under the run's S3 prefix: relative, no "..", no empty segments.
RELATIVE_KEY_PATTERN: Final = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
MAX_CSV_COLUMNS: Final = 64


class ResultsCsv(_Model):
    """A CSV that a custom evaluator writes under the run's S3 prefix instead of results.json.

    The harvester reads it when the run ends and maps the named columns onto scores, e.g.
    ``columns: {pdm_score: PDMS, collision_rate: NC}`` for a NAVSIM-style per-scenario table.
    Scores from the CSV win over scores of the same name in results.json.
    """

    path: Annotated[str, StringConstraints(max_length=TEXT_MAX, pattern=RELATIVE_KEY_PATTERN)] = (
        Field(
            default="results.csv",
            description="Key of the CSV, relative to the run's S3 prefix (no leading slash).",
        )
    )
    columns: Annotated[
        dict[Name, Name],
        WithJsonSchema(
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": MAX_CSV_COLUMNS,
                "additionalProperties": {"type": "string", "minLength": 1, "maxLength": NAME_MAX},
            }
        ),
    ] = Field(
        min_length=1,
        max_length=MAX_CSV_COLUMNS,
        description="Score name -> CSV column header whose numbers become that score.",
    )
    aggregate: CsvAggregate = Field(
        default=CsvAggregate.MEAN,
        description="How rows combine into one score: mean (e.g. over scenarios), last, min, max.",
    )


class Evaluation(_Model):
    """The final (and periodic) evaluation of the trained policy."""

    episodes: int = Field(default=10, ge=1, le=100000, description="Episodes per evaluation.")
    results_csv: ResultsCsv | None = Field(
        default=None,
        description="Harvest scores from a custom evaluator's CSV (column -> score mapping).",
    )


class Objective(_Model):
    """What "best" means: for checkpoints, sweep trials, and the SCORE column."""

    metric: Name = Field(
        default="pdm_score",
        description="Evaluation result that scores a run, a key of status.results "
        "(e.g. pdm_score, reward_mean, collision_rate).",
    )
    mode: ObjectiveMode = Field(
        default=ObjectiveMode.MAX, description="max: higher is better; min: lower is better."
    )


class InitFrom(_Model):
    """Warm start: the experiment waits for another one to finish, then loads its checkpoint."""

    experiment: DNSName = Field(
        description="Name of an Experiment in the same namespace to start from."
    )
    checkpoint: CheckpointChoice = Field(
        default=CheckpointChoice.BEST,
        description="Which of its checkpoints: best (by its objective) or latest.",
    )


class ParameterSpace(_Model):
    """Where a sweep draws one hyperparameter from; exactly one of the fields is set."""

    # "Exactly one" is minProperties/maxProperties rather than a CEL rule: choice and grid hold
    # values of any scalar type, which a structural schema can only leave untyped, and CEL
    # cannot see untyped fields (has(self.choice) does not compile).
    model_config = ConfigDict(
        json_schema_extra=_validations(
            _rule(
                "!has(self.uniform) || self.uniform[0] < self.uniform[1]",
                "uniform: low must be less than high",
                ".uniform",
            ),
            _rule(
                "!has(self.logUniform) || "
                "(self.logUniform[0] > 0.0 && self.logUniform[0] < self.logUniform[1])",
                "logUniform: low must be greater than 0 and less than high",
                ".logUniform",
            ),
            _rule(
                "!has(self.randint) || self.randint[0] < self.randint[1]",
                "randint: low must be less than high",
                ".randint",
            ),
        )
        | {"minProperties": 1, "maxProperties": 1}
    )

    choice: list[Scalar] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PARAMETER_VALUES,
        description="Sample uniformly from these values.",
    )
    grid: list[Scalar] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PARAMETER_VALUES,
        description="Try every one of these values (crossed with the other grid parameters).",
    )
    uniform: tuple[float, float] | None = Field(
        default=None, description="[low, high]: sample a float uniformly; low < high."
    )
    log_uniform: tuple[float, float] | None = Field(
        default=None,
        description="[low, high]: sample a float uniformly in log space; 0 < low < high. The "
        "usual choice for learning rates.",
    )
    randint: tuple[int, int] | None = Field(
        default=None,
        description="[low, high): sample an integer, low inclusive, high exclusive; low < high.",
    )

    @property
    def kind(self) -> str:
        """Which field is set: choice, grid, uniform, logUniform or randint."""
        for name, value in (
            ("choice", self.choice),
            ("grid", self.grid),
            ("uniform", self.uniform),
            ("logUniform", self.log_uniform),
            ("randint", self.randint),
        ):
            if value is not None:
                return name
        raise ValueError("no kind set")  # the validator makes this unreachable

    def values(self) -> list[bool | int | float | str]:
        """The finite values of a choice or grid space (empty for the others)."""
        return list(self.choice or self.grid or [])

    @model_validator(mode="after")
    def _one_valid_kind(self) -> ParameterSpace:
        kinds = {
            "choice": self.choice,
            "grid": self.grid,
            "uniform": self.uniform,
            "logUniform": self.log_uniform,
            "randint": self.randint,
        }
        given = [name for name, value in kinds.items() if value is not None]
        if len(given) != 1:
            raise ValueError(
                "exactly one of choice, grid, uniform, logUniform or randint must be set, "
                f"got {', '.join(given) or 'none'}"
            )
        for name in ("uniform", "logUniform", "randint"):
            bounds = kinds[name]
            if isinstance(bounds, tuple) and not bounds[0] < bounds[1]:
                raise ValueError(f"{name}: low ({bounds[0]}) must be less than high ({bounds[1]})")
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise ValueError(f"logUniform: low ({self.log_uniform[0]}) must be greater than 0")
        return self


class Scheduler(_Model):
    """Early stopping of unpromising sweep trials."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _rule(
                "!has(self.reductionFactor) || (has(self.type) && self.type == 'asha')",
                "reductionFactor applies only to the asha scheduler",
                ".reductionFactor",
            )
        )
    )

    type: SchedulerType = Field(
        default=SchedulerType.NONE,
        description="none: run every trial to the end; asha: asynchronous successive halving; "
        "median: stop trials below the median of the others at the same step.",
    )
    grace_period: int | None = Field(
        default=None,
        ge=1,
        description="Reports (training updates) a trial makes before it may be stopped. Unset: 1.",
    )
    reduction_factor: int | None = Field(
        default=None,
        ge=2,
        description="asha only: keep 1/reductionFactor of the trials at each rung. Unset: 4.",
    )

    @model_validator(mode="after")
    def _reduction_factor_for_asha(self) -> Scheduler:
        if self.reduction_factor is not None and self.type != SchedulerType.ASHA:
            raise ValueError("reductionFactor applies only to the asha scheduler")
        return self


class RayCluster(_Model):
    """The Ray cluster a sweep runs on, when it runs on its own cluster (KubeRay)."""

    workers: int = Field(default=1, ge=1, le=1024, description="Number of Ray worker pods.")
    gpus_per_worker: int = Field(default=0, ge=0, le=64, description="GPUs of each worker pod.")
    cpu_per_worker: Quantity | None = Field(
        default=None,
        description="CPU request and limit of each worker pod. Unset: spec.resources.cpu "
        "(one trial's worth).",
    )
    memory_per_worker: Quantity | None = Field(
        default=None,
        description="Memory request and limit of each worker pod. Unset: spec.resources.memory.",
    )
    image: Text | None = Field(
        default=None, description="Container image of the Ray pods. Unset: the trainer image."
    )


_FINITE_ONLY = (
    "self.parameters.all(k, !has(self.parameters[k].uniform) && "
    "!has(self.parameters[k].logUniform) && !has(self.parameters[k].randint))"
)


class Sweep(_Model):
    """A hyperparameter sweep (Ray Tune): present, it turns the Experiment into many trials."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _rule(
                f"!has(self.searchAlgorithm) || self.searchAlgorithm != 'grid' || {_FINITE_ONLY}",
                "the grid search tries every combination, so every parameter must be grid or "
                "choice (not uniform, logUniform or randint)",
                ".parameters",
            ),
        )
    )
    # "tpe cannot sample a grid" is not a CEL rule: grid holds untyped values, which CEL
    # cannot see (see ParameterSpace); the pydantic validator below and the operator check it.

    num_samples: int = Field(
        default=1,
        ge=1,
        le=10000,
        description="Trials to sample; with grid parameters, repeats of the whole grid.",
    )
    max_concurrent_trials: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Trials running at once. Each trial gets spec.resources; a sweep without "
        "rayCluster runs in one pod sized for this many trials. Unset: 1 without rayCluster, "
        "as many as the Ray workers hold with it.",
    )
    search_algorithm: SearchAlgorithm = Field(
        default=SearchAlgorithm.RANDOM,
        description="random: independent samples; grid: every grid combination; tpe: "
        "tree-structured Parzen estimator (choice, uniform, logUniform, randint only).",
    )
    scheduler: Scheduler = Field(
        default_factory=lambda: Scheduler(), description="Early stopping of unpromising trials."
    )
    parameters: dict[str, ParameterSpace] = Field(
        min_length=1,
        max_length=MAX_SWEEP_PARAMETERS,
        description="Search space: hyperparameter name to the space its values are drawn from. "
        "A trial's values override spec.hyperparameters of the same name.",
    )
    ray_cluster: RayCluster | None = Field(
        default=None,
        description="Run the sweep on its own Ray cluster (KubeRay RayJob). Unset: one pod "
        "runs Ray Tune locally.",
    )

    @model_validator(mode="after")
    def _search_fits_space(self) -> Sweep:
        kinds = {name: space.kind for name, space in self.parameters.items()}
        if self.search_algorithm == SearchAlgorithm.GRID:
            bad = sorted(n for n, kind in kinds.items() if kind not in ("grid", "choice"))
            if bad:
                raise ValueError(
                    f"parameters.{bad[0]}.{kinds[bad[0]]}: the grid search tries every "
                    "combination, so every parameter must be grid or choice"
                )
        if self.search_algorithm == SearchAlgorithm.TPE:
            grids = sorted(n for n, kind in kinds.items() if kind == "grid")
            if grids:
                raise ValueError(
                    f"parameters.{grids[0]}.grid: the tpe search cannot sample a grid; use "
                    "choice, or searchAlgorithm grid"
                )
        if self.planned_trials() > MAX_TRIALS:
            raise ValueError(
                f"numSamples x grid combinations is {self.planned_trials()} trials; at most "
                f"{MAX_TRIALS} are allowed"
            )
        return self

    def planned_trials(self) -> int:
        """How many trials the sweep will run: numSamples times the grid's combinations.

        The grid search crosses choice parameters too; the others sample them.
        """
        crossed = ("grid", "choice") if self.search_algorithm == SearchAlgorithm.GRID else ("grid",)
        combinations = 1
        for space in self.parameters.values():
            if space.kind in crossed:
                combinations *= len(space.values())
        return self.num_samples * combinations


class Resources(_Model):
    """Compute for each trainer pod."""

    gpus: int = Field(default=0, ge=0, le=64, description="GPUs per node (nvidia.com/gpu).")
    cpu: Quantity = Field(
        default="1", description='CPU request and limit per node, e.g. "4" or 500m.'
    )
    memory: Quantity = Field(
        default="4Gi", description="Memory request and limit per node, e.g. 16Gi."
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Nodes (pods) to train on; more than 1 trains with DistributedDataParallel.",
    )


class EnvVar(_Model):
    """An environment variable of the trainer container."""

    name: Annotated[str, StringConstraints(max_length=NAME_MAX, pattern=ENV_VAR_NAME_PATTERN)] = (
        Field(description="Variable name.")
    )
    value: Annotated[str, StringConstraints(max_length=MESSAGE_MAX)] = Field(
        default="", description="Variable value."
    )


class Trainer(_Model):
    """Custom research code: the container that trains, instead of kexp's built-in trainer."""

    image: Text | None = Field(
        default=None,
        description="Container image. Unset: kexp's trainer image. Required for Custom.",
    )
    command: list[Text] = Field(
        default_factory=list,
        max_length=MAX_ARGS,
        description="Entrypoint, replacing the image's. It must follow the kexp trainer "
        "contract (read $KEXP_CONFIG, write under $KEXP_S3_PREFIX).",
    )
    args: list[Text] = Field(
        default_factory=list, max_length=MAX_ARGS, description="Arguments to the entrypoint."
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=MAX_ENV,
        description="Extra environment variables. Never put credentials here: they are "
        "recorded in the Experiment for everyone with read access.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )

    @model_validator(mode="after")
    def _unique_env_names(self) -> Trainer:
        names = [var.name for var in self.env]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"env: duplicate variable names {', '.join(duplicates)}")
        return self


class Source(_Model):
    """The code the run used, recorded by `kexp submit` from the researcher's checkout."""

    repository: Text | None = Field(default=None, description="Git repository URL.")
    revision: Name | None = Field(
        default=None, description="Branch or tag the commit was taken from."
    )
    commit: GitCommit | None = Field(default=None, description="Full 40-character git commit hash.")
    dirty: bool = Field(
        default=False, description="Whether the checkout had uncommitted changes when submitted."
    )


class Storage(_Model):
    """Where checkpoints and results go (any S3-compatible store)."""

    bucket: Annotated[str, StringConstraints(max_length=63, pattern=S3_BUCKET_PATTERN)] = Field(
        default=contract.DEFAULT_BUCKET, description="S3 bucket."
    )
    secret_ref: DNSName = Field(
        default=contract.DEFAULT_S3_SECRET,
        description="Secret in the Experiment's namespace with the S3 endpoint and credentials "
        "(keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION).",
    )
    prefix: Text | None = Field(
        default=None,
        description="Key prefix inside the bucket, before <namespace>/<experiment>/<uid>/.",
    )


class Retry(_Model):
    """How failures and runaway runs are handled."""

    backoff_limit: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Retries of a failed trainer pod; a retry resumes from the latest checkpoint.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the run after this many seconds. Unset: no deadline."
    )


def _unique_tags(tags: list[str]) -> list[str]:
    duplicates = sorted({tag for tag in tags if tags.count(tag) > 1})
    if duplicates:
        raise ValueError(f"duplicate tags: {', '.join(duplicates)}")
    return tags


class _SpecFields(_Model):
    """The fields an ExperimentTemplate and an Experiment share."""

    description: Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX)] = Field(
        default="", description="What this run tries, in a sentence; free text. May change later."
    )
    tags: Annotated[list[Tag], AfterValidator(_unique_tags)] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description="Labels for finding runs (kubectl get exp -l kexp.io/tag.<tag>); each is "
        "also set as the label kexp.io/tag.<tag>=true. Lowercase letters, digits, '-', '_', "
        "'.'; at most 59 characters. May change later.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    algorithm: Algorithm | None = Field(
        default=None,
        description="Training algorithm: PPO, SAC, BC, GAIL, CIMRL, or Custom (spec.trainer "
        "runs your own code). Required unless a template provides it.",
    )
    environment: Environment | None = Field(
        default=None, description="The environment the agent is trained and evaluated in."
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=dict,
        description="Algorithm hyperparameters, name to number, string or boolean (e.g. "
        "learningRate, batchSize, gamma), passed to the trainer as given.",
    )
    training: Training | None = Field(
        default=None, description="How long to train, and how often to checkpoint and evaluate."
    )
    evaluation: Evaluation = Field(
        default_factory=lambda: Evaluation(), description="The evaluation of the trained policy."
    )
    objective: Objective = Field(
        default_factory=lambda: Objective(),
        description='What "best" means for this run: checkpoints, sweep trials and the '
        "SCORE column are ranked by it.",
    )
    init_from: InitFrom | None = Field(
        default=None,
        description="Warm start from another Experiment's checkpoint; this one waits until "
        "that one has succeeded.",
    )
    expert_data: S3URI | None = Field(
        default=None,
        description="S3 URI (s3://bucket/prefix/) of expert demonstrations, for BC, GAIL and "
        "CIMRL.",
    )
    sweep: Sweep | None = Field(
        default=None, description="Hyperparameter sweep (Ray Tune). Unset: a single training run."
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(), description="Compute for each trainer pod."
    )
    trainer: Trainer | None = Field(
        default=None, description="Custom research code. Unset: kexp's built-in trainer."
    )
    source: Source | None = Field(
        default=None, description="The code the run used (repository, revision, commit)."
    )
    storage: Storage = Field(
        default_factory=lambda: Storage(), description="Where checkpoints and results are written."
    )
    retry: Retry = Field(default_factory=lambda: Retry(), description="Retries and deadline.")


def _immutability_rules(schema: JsonDict) -> None:
    # A transition rule on a field only runs when the field is set in both the old and the new
    # object, so the spec-level has() rules catch a field being added or removed.
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        raise TypeError("ExperimentSpec's schema has no properties")
    spec_rules: list[JsonDict] = [
        _rule(
            "has(self.algorithm) || has(self.templateRef)",
            "spec.algorithm is required unless spec.templateRef names a template",
            ".algorithm",
            "FieldValueRequired",
        ),
        # Nested fields are optional in the schema so an Experiment can override part of a
        # template's section (training: {seed: 1}); without a template they are required.
        _rule(
            "has(self.templateRef) || (has(self.training) && has(self.training.totalSteps))",
            "spec.training.totalSteps is required unless spec.templateRef names a template",
            ".training",
            "FieldValueRequired",
        ),
        _rule(
            "has(self.templateRef) || (has(self.environment) && has(self.environment.id))"
            " || (has(self.algorithm) && self.algorithm == 'Custom')",
            "spec.environment.id is required unless spec.templateRef names a template or "
            "spec.algorithm is Custom",
            ".environment",
            "FieldValueRequired",
        ),
    ]
    spec_rules += [
        _rule(
            "!has(self.sweep) || !has(self.algorithm) || self.algorithm != 'Custom'",
            "spec.sweep: a sweep runs kexp's built-in algorithms; a Custom trainer cannot be swept",
            ".sweep",
        ),
        _rule(
            "!has(self.sweep) || !has(self.resources) || !has(self.resources.nodes) || "
            "self.resources.nodes == 1",
            "spec.sweep: each trial runs on one node; spec.resources.nodes must be 1",
            ".sweep",
        ),
    ]
    for name, prop in properties.items():
        if name in MUTABLE_SPEC_FIELDS or not isinstance(prop, dict):
            continue
        message = f"spec.{name} is immutable once submitted; create a new Experiment instead"
        rules = prop.setdefault("x-kubernetes-validations", [])
        if isinstance(rules, list):
            rules.append(_rule("self == oldSelf", message))
        spec_rules.append(
            _rule(
                f"has(self.{name}) == has(oldSelf.{name})",
                f"spec.{name} cannot be added or removed once submitted; "
                "create a new Experiment instead",
                f".{name}",
            )
        )
    existing = schema.setdefault("x-kubernetes-validations", [])
    if isinstance(existing, list):
        existing.extend(spec_rules)


class ExperimentSpec(_SpecFields):
    """What to train, how, and on what; immutable once submitted except description and tags."""

    model_config = ConfigDict(json_schema_extra=_immutability_rules)

    template_ref: DNSName | None = Field(
        default=None,
        description="Name of an ExperimentTemplate in the same namespace whose spec this one "
        "extends: this spec's fields win, maps merge, lists are replaced.",
    )

    @model_validator(mode="after")
    def _algorithm_or_template(self) -> ExperimentSpec:
        if self.algorithm is None and self.template_ref is None:
            raise ValueError("spec.algorithm is required unless spec.templateRef names a template")
        return self


class ExperimentTemplateSpec(_SpecFields):
    """A partial Experiment spec: shared settings that Experiments extend via templateRef."""


# ---- status ---------------------------------------------------------------------------------


class Condition(_StatusModel):
    """One aspect of the Experiment's state (Validated, JobCreated, Running, Harvested, ...)."""

    type: Annotated[str, StringConstraints(max_length=316, pattern=CONDITION_TYPE_PATTERN)] = Field(
        description="Condition type, in CamelCase."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: (
        Annotated[str, StringConstraints(max_length=TEXT_MAX, pattern=CONDITION_REASON_PATTERN)]
        | None
    ) = Field(
        default=None, description="Machine-readable CamelCase reason for the last transition."
    )
    message: Annotated[str, StringConstraints(max_length=MESSAGE_MAX)] | None = Field(
        default=None, description="Human-readable details; names the field when validation failed."
    )
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from."
    )


class Provenance(_StatusModel):
    """Everything needed to reproduce the run, recorded by the operator and the trainer."""

    git_commit: str | None = Field(default=None, description="Git commit of the code.")
    git_branch: str | None = Field(default=None, description="Git branch or tag of the code.")
    git_dirty: bool | None = Field(
        default=None, description="Whether the code had uncommitted changes."
    )
    repository: str | None = Field(default=None, description="Git repository URL.")
    image: str | None = Field(
        default=None, description="Trainer container image, by digest when known."
    )
    config_hash: str | None = Field(
        default=None,
        description="Hash of the resolved spec; equal hashes mean the same configuration.",
    )
    submitted_at: datetime | None = Field(
        default=None, description="When the Experiment was accepted."
    )
    started_at: datetime | None = Field(default=None, description="When training started.")
    completed_at: datetime | None = Field(default=None, description="When the run finished.")
    init_from_checkpoint: str | None = Field(
        default=None, description="S3 URI of the checkpoint the run was warm-started from."
    )
    python_version: str | None = Field(default=None, description="Python version of the trainer.")
    torch_version: str | None = Field(default=None, description="PyTorch version of the trainer.")
    cuda_version: str | None = Field(
        default=None, description="CUDA version PyTorch was built with; unset on CPU-only builds."
    )
    device: str | None = Field(
        default=None, description="Device trained on, e.g. cuda:0 (H100) or cpu."
    )


class Jobs(_StatusModel):
    """Names of the Experiment's child workloads."""

    train: str | None = Field(default=None, description="Name of the training Job (or RayJob).")
    evaluate: str | None = Field(default=None, description="Name of the evaluation Job.")


class Progress(_StatusModel):
    """Training progress from the trainer's heartbeat."""

    step: int | None = Field(default=None, ge=0, description="Environment steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Environment steps in total.")
    percent: float | None = Field(
        default=None, ge=0, le=100, description="step / totalSteps, in %."
    )
    steps_per_second: float | None = Field(
        default=None, ge=0, description="Recent training throughput."
    )
    eta: datetime | None = Field(default=None, description="Estimated time the training ends.")
    updated_at: datetime | None = Field(default=None, description="Time of the last heartbeat.")


class Checkpoints(_StatusModel):
    """Where the run's checkpoints are."""

    latest: str | None = Field(default=None, description="S3 URI of the newest checkpoint.")
    best: str | None = Field(
        default=None, description="S3 URI of the best checkpoint by the objective."
    )
    best_step: int | None = Field(
        default=None, ge=0, description="Step the best checkpoint was taken at."
    )


class TrialState(StrEnum):
    """Where one trial of a sweep is."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED_EARLY = "stoppedEarly"
    FAILED = "failed"


class Trial(_StatusModel):
    """One trial of a sweep."""

    name: str | None = Field(default=None, description="Trial name (Ray Tune's trial id).")
    state: TrialState | None = Field(
        default=None,
        description="pending, running, completed, stoppedEarly (by the scheduler) or failed.",
    )
    hyperparameters: Annotated[
        dict[str, Scalar],
        WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
    ] = Field(default_factory=dict, description="The trial's sampled hyperparameters.")
    score: float | None = Field(
        default=None,
        description="The trial's objective value: from its final evaluation, or for a trial "
        "stopped early its last value during training.",
    )
    step: int | None = Field(default=None, ge=0, description="Environment steps it trained.")
    checkpoint: str | None = Field(
        default=None, description="S3 URI of the trial's best checkpoint."
    )
    error: Annotated[str, StringConstraints(max_length=TEXT_MAX)] | None = Field(
        default=None, description="Why the trial failed, in one line."
    )


class SweepStatus(_StatusModel):
    """Progress and results of a sweep."""

    planned: int | None = Field(
        default=None, ge=0, description="Trials the sweep will run (numSamples x grid)."
    )
    trials: int | None = Field(default=None, ge=0, description="Trials created.")
    running: int | None = Field(default=None, ge=0, description="Trials running now.")
    completed: int | None = Field(default=None, ge=0, description="Trials that ran to the end.")
    stopped_early: int | None = Field(
        default=None, ge=0, description="Trials the scheduler stopped early."
    )
    failed: int | None = Field(default=None, ge=0, description="Trials that failed.")
    best_trial: Trial | None = Field(default=None, description="The best trial by the objective.")
    leaderboard: list[Trial] = Field(
        default_factory=list,
        max_length=MAX_LEADERBOARD,
        description=f"The best trials by the objective, best first (at most {MAX_LEADERBOARD}; "
        "every trial is in sweep.json under the run's S3 prefix).",
    )
    updated_at: datetime | None = Field(
        default=None, description="When the sweep last reported (its heartbeat)."
    )


class ExperimentStatus(_StatusModel):
    """What the operator observed; written only by the operator."""

    phase: Phase | None = Field(
        default=None,
        description="Pending, Waiting (for initFrom), Running, Evaluating, Succeeded or Failed.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        description="Latest observations of the Experiment's state, one per type.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the operator last acted on."
    )
    provenance: Provenance | None = Field(
        default=None, description="What is needed to reproduce the run."
    )
    jobs: Jobs | None = Field(default=None, description="Names of the child workloads.")
    progress: Progress | None = Field(default=None, description="Training progress.")
    checkpoints: Checkpoints | None = Field(default=None, description="Where the checkpoints are.")
    results: Annotated[
        dict[str, float | str],
        WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
    ] = Field(
        default_factory=dict,
        description="Final evaluation results, metric name to value (reward, collision_rate, "
        "ego_progress, pdm_score, ...).",
    )
    score: float | None = Field(
        default=None, description="The objective's value (results[objective.metric])."
    )
    sweep: SweepStatus | None = Field(default=None, description="Progress and results of a sweep.")
    message: Annotated[str, StringConstraints(max_length=MESSAGE_MAX)] | None = Field(
        default=None, description="Human-readable summary of the current state."
    )
    algorithm: Algorithm | None = Field(
        default=None,
        description="The algorithm the run uses: the spec's own, or its template's.",
    )
    environment: Annotated[str, StringConstraints(max_length=NAME_MAX)] | None = Field(
        default=None,
        description="The environment id the run uses: the spec's own, or its template's.",
    )
    reason: Annotated[str, StringConstraints(max_length=NAME_MAX)] | None = Field(
        default=None,
        description="Machine-readable reason for the current phase (e.g. PodRunning, "
        "OOMKilled, Unschedulable, TemplateNotFound).",
    )


# ---- whole objects ---------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The metadata fields kexp reads; every other one is kept as given."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Experiment(BaseModel):
    """An Experiment is one training run or hyperparameter sweep, with its provenance, progress
    and results. Its spec is immutable once submitted, except description and tags."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: Literal["kexp.io/v1alpha1"] = "kexp.io/v1alpha1"
    kind: Literal["Experiment"] = "Experiment"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ExperimentSpec = Field(description="What to train, how, and on what.")
    status: ExperimentStatus = Field(
        default_factory=lambda: ExperimentStatus(),
        description="What the operator observed; written only by the operator.",
    )


class ExperimentTemplate(BaseModel):
    """An ExperimentTemplate is a partial Experiment spec that Experiments extend through
    spec.templateRef: their own fields win, maps merge, lists are replaced."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: Literal["kexp.io/v1alpha1"] = "kexp.io/v1alpha1"
    kind: Literal["ExperimentTemplate"] = "ExperimentTemplate"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ExperimentTemplateSpec = Field(
        description="Partial Experiment spec: any field of an Experiment's spec except templateRef."
    )


# ---- helpers ---------------------------------------------------------------------------------

# Paths (with "*" for any map key) whose values an Experiment replaces whole instead of merging
# into the template's: merging two parameter spaces could leave two kinds set in one.
_ATOMIC_PATHS: Final = frozenset({("sweep", "parameters", "*")})


def _is_atomic(path: tuple[str, ...]) -> bool:
    return any(
        len(pattern) == len(path)
        and all(p in ("*", key) for p, key in zip(pattern, path, strict=True))
        for pattern in _ATOMIC_PATHS
    )


def _merge(
    base: Mapping[str, Any], override: Mapping[str, Any], path: tuple[str, ...]
) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if value is None:  # Kubernetes drops nulls; a null never unsets a template's value
            continue
        here = (*path, key)
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping) and not _is_atomic(here):
            merged[key] = _merge(below, value, here)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_template(template_spec: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve an Experiment's spec against its template's; neither argument is changed.

    Both are wire-format (camelCase) dicts as stored by the API server, not model dumps, so
    that defaults never override a template's values. The Experiment's fields win; maps merge
    recursively; lists (tags, trainer.args, choice values, ...) are replaced, not
    concatenated; a sweep parameter's space is replaced whole.
    """
    return _merge(template_spec, spec, ())


def resolve_spec(
    spec: Mapping[str, Any], template_spec: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The spec a run uses: merged with its template (if any), validated, defaults filled in.

    Raises pydantic.ValidationError, naming the field, when the merged spec is invalid.
    """
    merged = merge_template(template_spec or {}, spec)
    return ExperimentSpec.model_validate(merged).to_wire()


def config_hash(spec: Mapping[str, Any]) -> str:
    """First 16 hex digits of the sha256 of the canonical JSON of a resolved spec.

    Canonical means sorted keys and no insignificant whitespace, so key order never changes
    the hash. Fields that do not change what runs (description, tags, templateRef) are left
    out, so a run and its re-run under another name or template share a hash.
    """
    relevant = {k: v for k, v in spec.items() if k not in UNHASHED_SPEC_FIELDS}
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
