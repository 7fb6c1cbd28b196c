"""Pid files, liveness and stopping of the stack's processes (real child processes)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from kexp.dev import processes


def test_started_process_is_ours_until_stopped(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker")
    record = processes.start_process(
        [sys.executable, "-c", "import time; time.sleep(60)", marker],
        log_path=tmp_path / "logs" / "p.log",
        pid_path=tmp_path / "run" / "p.pid",
    )
    assert processes.read_pid_file(tmp_path / "run" / "p.pid") == record
    assert processes.is_ours(record)
    assert processes.processes_using(marker) == [record.pid]
    processes.stop_pids([record.pid], grace_s=5)
    assert not processes.is_ours(record)
    assert processes.processes_using(marker) == []


def test_process_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    record = processes.start_process(
        [sys.executable, "-c", code],
        log_path=tmp_path / "p.log",
        pid_path=tmp_path / "p.pid",
    )
    processes.stop_pids([record.pid], grace_s=0.5)
    assert not processes.is_alive(record.pid)


def test_a_recycled_pid_is_not_taken_for_ours(tmp_path: Path) -> None:
    # Our own pid is alive but runs another program than the record says.
    record = processes.PidRecord(pid=processes.os.getpid(), argv0="/usr/bin/etcd")
    assert not processes.is_ours(record)


def test_corrupt_or_missing_pid_files_read_as_stale(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pid"
    bad.write_text("{not json")
    assert processes.read_pid_file(bad) is None
    assert processes.read_pid_file(tmp_path / "absent.pid") is None


def test_port_is_free_sees_a_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not processes.port_is_free(port)
    assert processes.port_is_free(port)
