"""What a trainer writes for the operator to read: ``progress.json`` and ``results.json``.

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
