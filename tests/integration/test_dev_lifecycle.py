"""`kexp dev up | down | status | env` as a user runs them, including the ways they go wrong.

These run a second stack in a state dir of their own (ports 28400+), separate from the
session stack the other tests share.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kexp.dev import processes
from kexp.dev.stack import SERVICE_NAMES, Ports, Stack

pytestmark = [pytest.mark.stack, pytest.mark.slow]
PORT_BASE = int(os.environ.get("KEXP_TEST_LIFECYCLE_PORT_BASE", "28400"))


def kexp(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "kexp.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kexp {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("lifecycle")
    yield path
    Stack(path).down()
    assert processes.processes_using(str(path)) == []


def pids(state: Path) -> dict[str, int]:
    return Stack(state).running_services()


def test_up_starts_everything_and_reports_the_api_server_time(state: Path) -> None:
    out = kexp("dev", "up", "--state-dir", str(state), "--port-base", str(PORT_BASE))
    assert "API server ready after" in out.stdout
    assert set(pids(state)) == set(SERVICE_NAMES)
    status = json.loads(kexp("dev", "status", "--state-dir", str(state), "-o", "json").stdout)
    assert all(svc["ready"] for svc in status["services"].values())


def test_up_again_is_idempotent(state: Path) -> None:
    before = pids(state)
    out = kexp("dev", "up", "--state-dir", str(state))
    assert "started: nothing (all running)" in out.stdout
    assert pids(state) == before


def test_env_exports_work_for_kubectl(state: Path) -> None:
    out = kexp("dev", "env", "--state-dir", str(state)).stdout
    assert f"export KUBECONFIG={state / 'kubeconfig'}" in out
    assert (
        f"export KEXP_PROMETHEUS_URL=http://127.0.0.1:{Ports.from_base(PORT_BASE).prometheus}"
        in out
    )
    proc = subprocess.run(
        ["bash", "-c", f"{out}\nkubectl get nodes -o name && kubectl version -o json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "node/kexp-gpu-0" in proc.stdout
    assert '"gitVersion": "v1.34.2"' in proc.stdout  # our pinned build, not some other kubectl


def test_a_killed_service_is_restarted_by_up(state: Path) -> None:
    before = pids(state)
    os.kill(before["kube-scheduler"], signal.SIGKILL)
    out = kexp("dev", "up", "--state-dir", str(state))
    assert "started: kube-scheduler" in out.stdout
    after = pids(state)
    assert after["kube-scheduler"] != before["kube-scheduler"]
    assert {k: v for k, v in after.items() if k != "kube-scheduler"} == {
        k: v for k, v in before.items() if k != "kube-scheduler"
    }


def test_down_leaves_no_process_even_without_pid_files(state: Path) -> None:
    running = pids(state)
    assert running
    # A killed `kexp dev up` can lose track of its children: the state dir still finds them.
    for pid_file in (state / "run").glob("*.pid"):
        pid_file.unlink()
    out = kexp("dev", "down", "--state-dir", str(state))
    assert out.stdout.startswith("stopped ")
    assert processes.processes_using(str(state)) == []
    assert not any(processes.is_alive(pid) for pid in running.values())
    status = kexp("dev", "status", "--state-dir", str(state), check=False)
    assert status.returncode == 1


def test_up_on_a_port_in_use_says_which_and_leaves_nothing_running(state: Path) -> None:
    busy = Ports.from_base(PORT_BASE).minio
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", busy))
        sock.listen()
        out = kexp("dev", "up", "--state-dir", str(state), check=False)
    assert out.returncode == 1
    assert f"port {busy} (for minio) is already in use" in out.stderr
    assert "--port-base" in out.stderr
    assert processes.processes_using(str(state)) == []


def test_corrupt_state_is_reported_and_purge_recovers(state: Path) -> None:
    (state / "stack.json").write_text("{ this is not json")
    out = kexp("dev", "up", "--state-dir", str(state), check=False)
    assert out.returncode == 1
    assert "is corrupt" in out.stderr
    assert "kexp dev down --purge" in out.stderr
    assert processes.processes_using(str(state)) == []

    kexp("dev", "down", "--state-dir", str(state), "--purge")
    assert not state.exists()
    started = time.monotonic()
    kexp("dev", "up", "--state-dir", str(state), "--port-base", str(PORT_BASE))
    assert set(pids(state)) == set(SERVICE_NAMES)
    assert time.monotonic() - started < 120


def test_damaged_etcd_data_fails_with_its_log_and_a_way_out(state: Path) -> None:
    kexp("dev", "down", "--state-dir", str(state))
    db = state / "etcd" / "member" / "snap" / "db"
    db.write_bytes(b"\0garbage" * 1024)
    out = kexp("dev", "up", "--state-dir", str(state), "--timeout", "60", check=False)
    assert out.returncode == 1
    assert "etcd exited during start-up" in out.stderr
    assert "kexp dev down --purge" in out.stderr
    assert processes.processes_using(str(state)) == []
