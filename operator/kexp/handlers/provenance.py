"""Where an experiment's code came from: the commit, resolved without blocking the loop."""

from __future__ import annotations

import asyncio
import re
from typing import Final

_COMMIT: Final = re.compile(r"^[0-9a-f]{40}$")


class SourceError(RuntimeError):
    """The revision could not be resolved to a commit; the message says why."""


def is_commit(revision: str) -> bool:
    """True for a full 40-hex commit id."""
    return bool(_COMMIT.match(revision))


async def resolve_revision(repository: str, revision: str, *, timeout_s: float = 20.0) -> str:
    """The commit ``revision`` (branch, tag or commit) names in ``repository``.

    Uses ``git ls-remote``, which reads refs without cloning anything.
    """
    if is_commit(revision):
        return revision
    proc = await asyncio.create_subprocess_exec(
        "git",
        "ls-remote",
        "--",
        repository,
        revision,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise SourceError(f"git ls-remote {repository} timed out after {timeout_s:.0f}s") from exc
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()
        raise SourceError(
            f"git ls-remote {repository} {revision} failed: {detail[-1] if detail else 'error'}"
        )
    refs = [line.split("\t") for line in out.decode().splitlines() if "\t" in line]
    # Prefer an exact branch, then a tag (peeled to its commit), then anything that matched.
    for wanted in (f"refs/heads/{revision}", f"refs/tags/{revision}^{{}}", f"refs/tags/{revision}"):
        for sha, ref in refs:
            if ref == wanted:
                return sha
    if refs:
        return refs[0][0]
    raise SourceError(f"revision {revision!r} not found in {repository} (spec.source.revision)")
