"""The local git tree as ``spec.source``: which code a run is meant to use.

Recorded at submission, so "which commit was that run?" always has an answer. A dirty tree
is recorded as such; the commit then does not fully describe the code.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def _git(directory: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_source(directory: Path) -> dict[str, Any] | None:
    """``{repository, revision, commit, dirty}`` of the git tree at ``directory``, or None
    when it is not a git work tree (or has no commit yet)."""
    commit = _git(directory, "rev-parse", "--verify", "HEAD")
    if not commit:
        return None
    source: dict[str, Any] = {"commit": commit}
    branch = _git(directory, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        source["revision"] = branch
    remote = _git(directory, "remote", "get-url", "origin")
    if remote:
        source["repository"] = remote
    # Untracked files count too: a new module the run imports is part of its code.
    status = _git(directory, "status", "--porcelain")
    source["dirty"] = bool(status)
    return source
