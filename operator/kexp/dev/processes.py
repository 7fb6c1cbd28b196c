"""Starting, finding and stopping the stack's background processes.

Each service runs in its own process group (so stopping it takes its children too), logs to
``<state>/logs/<name>.log`` and has a pid file. Pid files can be stale after a crash or a
killed ``kexp dev up``, and a pid can be reused by an unrelated program, so a pid is trusted
only when ``/proc/<pid>/cmdline`` still shows the binary we started. As a last line of defence
against orphans, ``processes_using`` finds any process whose command line mentions the state
dir, since every service is started with paths inside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PidRecord:
    """What a pid file holds: enough to tell our process from a recycled pid."""

    pid: int
    argv0: str


def read_cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, or None if it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def _state(pid: int) -> str | None:
    """The process state letter from /proc (R, S, Z, ...), None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def is_alive(pid: int) -> bool:
    """True while the process exists and has not exited (zombies count as exited)."""
    state = _state(pid)
    return state is not None and state not in ("Z", "X")


def is_ours(record: PidRecord) -> bool:
    """True when the pid is alive and still runs the binary we started."""
    argv = read_cmdline(record.pid)
    if argv is None:
        # Just after exec the kernel can briefly show an empty command line; a live,
        # non-zombie process with our pid file is still starting, not gone.
        return is_alive(record.pid)
    return argv[0] == record.argv0


def read_pid_file(path: Path) -> PidRecord | None:
    """The record in a pid file; None when absent or unreadable (a corrupt file is stale)."""
    try:
        data = json.loads(path.read_text())
        return PidRecord(pid=int(data["pid"]), argv0=str(data["argv0"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def start_process(
    argv: Sequence[str],
    *,
    log_path: Path,
    pid_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> PidRecord:
    """Start ``argv`` detached in its own session, appending output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n--- started {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    record = PidRecord(pid=proc.pid, argv0=argv[0])
    pid_path.write_text(json.dumps({"pid": record.pid, "argv0": record.argv0}))
    return record


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    # Our own children must be waited for, or they linger as zombies that look alive.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_pids(pids: Sequence[int], *, grace_s: float = 10.0) -> None:
    """SIGTERM each pid's process group, then SIGKILL whatever is left after ``grace_s``."""
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        for pid in alive:
            _reap(pid)
        alive = [p for p in alive if is_alive(p)]
        if alive:
            time.sleep(0.1)
    for pid in alive:
        _signal_group(pid, signal.SIGKILL)
    for pid in alive:
        for _ in range(50):
            _reap(pid)
            if not is_alive(pid):
                break
            time.sleep(0.1)


def processes_using(marker: str) -> list[int]:
    """Pids of live processes (not this one) whose command line contains ``marker``."""
    me = os.getpid()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        argv = read_cmdline(int(entry.name))
        if argv and any(marker in arg for arg in argv):
            found.append(int(entry.name))
    return found


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and we could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, for error messages that show what a service said."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:])


def wait_started(
    ready: Callable[[], bool], pid_path: Path, log_path: Path, deadline: float
) -> str | None:
    """Poll ``ready`` until it holds; None then, or why not: the process (its pid file at
    ``pid_path``) exited, or ``deadline`` (monotonic) passed, with the tail of its log."""
    while not ready():
        record = read_pid_file(pid_path)
        if record is None or not is_ours(record):
            return f"exited during start-up; its log ({log_path}) ends with:\n{log_tail(log_path)}"
        if time.monotonic() > deadline:
            return f"was not ready in time; its log ends with:\n{log_tail(log_path)}"
        time.sleep(0.2)
    return None
