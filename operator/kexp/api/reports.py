"""What a trainer writes for the operator to read: ``progress.json``, ``results.json`` and,
for sweeps, ``sweep.json``.

Part of the trainer contract (``kexp.api.contract`` names the files); the trainer runtime
writes these models and the operator's harvest reads them, so both sides share one
definition. camelCase on the wire, like the API.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _Report(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_json(self) -> str:
        """The file's content."""
        return self.model_dump_json(by_alias=True, exclude_none=True)


class ProgressReport(_Report):
    """The heartbeat: rewritten every few seconds while training runs."""

    step: int = Field(ge=0, description="Environment steps done so far.")
    total_steps: int = Field(ge=1, description="Environment steps the run will do.")
    steps_per_second: float = Field(ge=0, description="Recent training speed.")
    updated_at: str = Field(description="When this heartbeat was written (RFC 3339, UTC).")
    episode_reward: float | None = Field(default=None, description="Latest mean episode reward.")


class EnvironmentReport(_Report):
    """Where and how the run ran: what a reproduction needs besides the spec."""

    python_version: str
    torch_version: str | None = None
    cuda_version: str | None = None
    device: str = "cpu"
    seed: int | None = None
    git_commit: str | None = None
    hostname: str | None = None


class CheckpointsReport(_Report):
    """S3 URIs of the run's checkpoints."""

    latest: str | None = None
    best: str | None = None
    best_step: int | None = None


class ResultsReport(_Report):
    """The end of a run: its evaluation scores, or why it failed."""

    outcome: Literal["succeeded", "failed"]
    scores: dict[str, float] = Field(default_factory=dict)
    step: int = Field(default=0, ge=0)
    checkpoints: CheckpointsReport = Field(default_factory=CheckpointsReport)
    environment: EnvironmentReport | None = None
    error: str | None = Field(default=None, description="Why the run failed, in one line.")
    error_field: str | None = Field(
        default=None, description="The spec field at fault (e.g. spec.environment.id), if any."
    )
    finished_at: str | None = None


TrialStateName = Literal["pending", "running", "completed", "stoppedEarly", "failed"]


class TrialReport(_Report):
    """One trial of a sweep, as the sweep's driver last saw it."""

    name: str = Field(description="The trial's name (Ray Tune's trial id).")
    state: TrialStateName
    hyperparameters: dict[str, bool | int | float | str] = Field(default_factory=dict)
    score: float | None = Field(
        default=None,
        description="Objective value: the final evaluation's, or the last one seen during "
        "training for a trial that did not finish.",
    )
    scores: dict[str, float] = Field(
        default_factory=dict, description="The final evaluation's scores (finished trials)."
    )
    step: int | None = Field(default=None, ge=0, description="Environment steps trained.")
    iterations: int = Field(default=0, ge=0, description="Reports the trial made to Tune.")
    checkpoint: str | None = Field(default=None, description="S3 URI of its best checkpoint.")
    error: str | None = Field(default=None, description="Why it failed, in one line.")


class SweepReport(_Report):
    """The state of a whole sweep; rewritten while it runs, final when ``outcome`` is not
    ``running``."""

    outcome: Literal["running", "succeeded", "failed"]
    metric: str = Field(description="The objective's metric (spec.objective.metric).")
    mode: Literal["min", "max"] = "max"
    planned: int | None = Field(
        default=None, ge=0, description="Trials the sweep will run (numSamples x grid)."
    )
    trials: list[TrialReport] = Field(default_factory=list)
    error: str | None = Field(
        default=None, description="Why the sweep failed: the first trial's error if all failed."
    )
    updated_at: str = Field(description="When this report was written (RFC 3339, UTC).")
