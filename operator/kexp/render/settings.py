"""The operator's own settings that shape what it renders (images, ports)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

DEFAULT_TRAINER_IMAGE: Final = "ghcr.io/kexp-io/kexp-trainer:0.1.0"
#: Command of kexp's own trainer image; a custom ``spec.trainer.command`` replaces it.
DEFAULT_TRAINER_COMMAND: Final = ("python", "-m", "kexp_trainers.run")
#: What a sweep runs (a local Ray Tune driver, or the RayJob's entrypoint).
SWEEP_COMMAND: Final = ("python", "-m", "kexp_trainers.tune")
#: The uid and gid trainer containers run as (the trainer image's non-root user).
TRAINER_UID: Final = 1000


@dataclass(frozen=True)
class RenderSettings:
    """What the operator was configured with; defaults suit the published images."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    trainer_command: tuple[str, ...] = DEFAULT_TRAINER_COMMAND
    image_pull_policy: str = "IfNotPresent"
    extra_env: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RenderSettings:
        """Settings from ``KEXP_TRAINER_IMAGE`` and ``KEXP_IMAGE_PULL_POLICY``."""
        env = os.environ if env is None else env
        return cls(
            trainer_image=env.get("KEXP_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
            image_pull_policy=env.get("KEXP_IMAGE_PULL_POLICY", "IfNotPresent"),
        )
