"""Seeding, device choice and the environment report that goes into results.json."""

from __future__ import annotations

import os
import platform
import random
import socket
from typing import Any

from kexp.api.reports import EnvironmentReport


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so the same seed and spec reproduce a run."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    except ImportError:
        pass


def pick_device() -> Any:
    """CUDA when a GPU is visible, else the CPU (a torch.device)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment_report(seed: int | None, git_commit: str | None) -> EnvironmentReport:
    """Python, torch, CUDA and device of this run, for reproduction."""
    torch_version = cuda_version = None
    device = "cpu"
    try:
        import torch

        torch_version = torch.__version__
        cuda_version = torch.version.cuda
        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return EnvironmentReport(
        python_version=platform.python_version(),
        torch_version=torch_version,
        cuda_version=cuda_version,
        device=device,
        seed=seed,
        git_commit=git_commit,
        hostname=socket.gethostname(),
    )
