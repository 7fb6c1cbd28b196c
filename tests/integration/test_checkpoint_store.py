"""The trainer's checkpoint store on the real MinIO: upload, layout, pruning, resume, faults."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from kexp.dev.stack import Stack
from kexp.storage.s3 import S3Credentials, s3_client
from kexp_trainers.runtime.checkpoints import CheckpointError, CheckpointStore, UploadResult

pytestmark = pytest.mark.stack
PREFIX = "research/ppo/uid-1/"


def write(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def read(s3: Minio, bucket: str, key: str) -> bytes:
    resp = s3.get_object(bucket, key)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()


def keys(s3: Minio, bucket: str) -> set[str]:
    return {o.object_name for o in s3.list_objects(bucket, recursive=True)}


def test_a_checkpoint_is_uploaded_pointed_to_and_only_then_deleted_locally(
    s3: Minio, bucket: str, tmp_path: Path
) -> None:
    uploads: list[UploadResult] = []
    store = CheckpointStore(s3, bucket, PREFIX, on_upload=uploads.append)
    local = tmp_path / "step-100.pt"
    data = write(local, 3 * 1024 * 1024)
    store.save(100, local)
    store.close()

    key = PREFIX + "checkpoints/step-100.pt"
    assert hashlib.sha256(read(s3, bucket, key)).digest() == hashlib.sha256(data).digest()
    assert read(s3, bucket, PREFIX + "checkpoints/latest").decode() == key
    assert not local.exists()
    assert [(u.key, u.size, u.attempts) for u in uploads] == [(key, len(data), 1)]
    assert store.latest() == (100, key)


def test_large_checkpoints_go_up_in_parts(s3: Minio, bucket: str, tmp_path: Path) -> None:
    store = CheckpointStore(s3, bucket, PREFIX, part_size=5 * 1024 * 1024)
    local = tmp_path / "big.pt"
    data = write(local, 23 * 1024 * 1024)
    store.save(7, local)
    store.close()
    stat = s3.stat_object(bucket, PREFIX + "checkpoints/step-7.pt")
    assert stat.etag.endswith("-5")  # an S3 multipart ETag: 5 parts of <= 5 MiB
    assert read(s3, bucket, PREFIX + "checkpoints/step-7.pt") == data


def test_best_is_a_copy_and_only_the_last_k_steps_are_kept(
    s3: Minio, bucket: str, tmp_path: Path
) -> None:
    store = CheckpointStore(s3, bucket, PREFIX, keep_last=2)
    contents = {}
    for step in (10, 20, 30, 40):
        local = tmp_path / f"{step}.pt"
        contents[step] = write(local, 1024 + step)
        store.save(step, local, best=(step == 20))
    store.close()
    assert keys(s3, bucket) == {
        PREFIX + "checkpoints/step-30.pt",
        PREFIX + "checkpoints/step-40.pt",
        PREFIX + "checkpoints/best.pt",
        PREFIX + "checkpoints/latest",
    }
    assert read(s3, bucket, PREFIX + "checkpoints/best.pt") == contents[20]


def test_a_restarted_pod_finds_and_loads_the_latest_checkpoint(
    s3: Minio, bucket: str, tmp_path: Path
) -> None:
    assert CheckpointStore(s3, bucket, PREFIX).latest() is None  # a fresh run starts at 0
    first = CheckpointStore(s3, bucket, PREFIX)
    for step in (5, 15):
        write(tmp_path / f"{step}.pt", 2048)
        first.save(step, tmp_path / f"{step}.pt")
    first.close()

    restarted = CheckpointStore(s3, bucket, PREFIX)
    step, key = restarted.latest() or (0, "")
    assert (step, key) == (15, PREFIX + "checkpoints/step-15.pt")
    got = restarted.download(key, tmp_path / "resume" / "ckpt.pt")
    assert got.read_bytes() == read(s3, bucket, key)

    # Without the pointer (or with one naming a pruned object) the listing still finds it.
    s3.remove_object(bucket, PREFIX + "checkpoints/latest")
    assert restarted.latest() == (15, PREFIX + "checkpoints/step-15.pt")
    s3.remove_object(bucket, PREFIX + "checkpoints/step-15.pt")
    assert restarted.latest() == (5, PREFIX + "checkpoints/step-5.pt")
    restarted.close()


class DelayedForwarder:
    """A TCP port that accepts nothing for ``down_s`` seconds, then forwards to MinIO.

    S3 is really unreachable for a while (connections are refused), then the real server
    answers; nothing about S3 is imitated.
    """

    def __init__(self, target: tuple[str, int], down_s: float) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.target = target
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(down_s,), daemon=True)
        self._thread.start()

    def _serve(self, down_s: float) -> None:
        time.sleep(down_s)
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", self.port))
            server.listen()
            server.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(self.target)
                for a, b in ((conn, upstream), (upstream, conn)):
                    threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def flaky_s3(stack: Stack) -> Iterator[Minio]:
    creds = stack.s3_credentials()
    port = int(creds.endpoint.rsplit(":", 1)[1])
    forwarder = DelayedForwarder(("127.0.0.1", port), down_s=1.5)
    yield s3_client(
        S3Credentials(f"http://127.0.0.1:{forwarder.port}", creds.access_key, creds.secret_key)
    )
    forwarder.stop()


def test_s3_down_for_a_while_loses_no_checkpoint(
    flaky_s3: Minio, s3: Minio, bucket: str, tmp_path: Path
) -> None:
    uploads: list[UploadResult] = []
    store = CheckpointStore(flaky_s3, bucket, PREFIX, backoff_s=0.25, on_upload=uploads.append)
    data = write(tmp_path / "1.pt", 4096)
    started = time.monotonic()
    store.save(1, tmp_path / "1.pt")
    assert time.monotonic() - started < 0.1  # the training loop is not held up
    store.close()
    # It really waited out the outage (the client's own retries and the store's together).
    assert uploads[0].seconds >= 1.0
    assert read(s3, bucket, PREFIX + "checkpoints/step-1.pt") == data


def test_s3_down_past_the_retry_budget_fails_the_run_and_keeps_the_file(
    bucket: str, tmp_path: Path, stack: Stack
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    creds = stack.s3_credentials()
    dead = s3_client(S3Credentials(f"http://127.0.0.1:{dead_port}", creds.access_key, "x" * 8))
    store = CheckpointStore(dead, bucket, PREFIX, retries=2, backoff_s=0.05)
    write(tmp_path / "1.pt", 1024)
    store.save(1, tmp_path / "1.pt")
    with pytest.raises(CheckpointError, match=r"failed 3 times"):
        store.wait(timeout_s=30)
    assert (tmp_path / "1.pt").exists()  # nothing is lost: the local copy stays
    write(tmp_path / "2.pt", 1024)
    with pytest.raises(CheckpointError):
        store.save(2, tmp_path / "2.pt")  # the next save says so too


def test_keep_last_must_be_positive(s3: Minio, bucket: str) -> None:
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointStore(s3, bucket, PREFIX, keep_last=0)
