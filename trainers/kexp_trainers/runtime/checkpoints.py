"""Checkpoints to S3 without stalling training, and the lookup a restarted pod resumes from.

``CheckpointStore.save`` takes a checkpoint the trainer has already written to local disk and
returns at once; a background thread uploads it (multipart for large files, bounded retries
with exponential backoff), then moves the ``checkpoints/latest`` pointer, copies it to
``checkpoints/best.pt`` when asked (a server-side copy), prunes step checkpoints beyond the
last ``keep_last``, and only then deletes the local copy. An upload that still fails after its
retries makes the next ``save`` or ``wait`` raise: a run must fail loudly rather than train on
without checkpoints. Layout and names come from ``kexp.api.contract``.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from minio import Minio
from minio.commonconfig import CopySource

from kexp.api import contract

log = logging.getLogger("kexp_trainers.checkpoints")

#: Parts of a multipart upload; 16 MiB keeps a 100 MB checkpoint to 7 parts.
PART_SIZE: Final = 16 * 1024 * 1024
_STEP_KEY: Final = re.compile(r"step-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be uploaded within the retry budget."""


@dataclass(frozen=True)
class UploadResult:
    """One finished upload, for metrics (``kexp_trainer_checkpoint_upload_seconds``)."""

    key: str
    size: int
    seconds: float
    attempts: int


@dataclass(frozen=True)
class _Job:
    step: int
    path: Path
    best: bool


class CheckpointStore:
    """Checkpoints of one run under ``s3://bucket/prefix``."""

    def __init__(
        self,
        client: Minio,
        bucket: str,
        prefix: str,
        *,
        keep_last: int | None = None,
        retries: int = 5,
        backoff_s: float = 0.5,
        part_size: int = PART_SIZE,
        on_upload: Callable[[UploadResult], None] | None = None,
    ) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError("keep_last must be at least 1 (or None to keep every checkpoint)")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.keep_last = keep_last
        self.retries = retries
        self.backoff_s = backoff_s
        self.part_size = part_size
        self.on_upload = on_upload
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._error: BaseException | None = None
        self._uploaded: list[int] = []
        self._worker = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
        self._worker.start()

    # ---- keys -------------------------------------------------------------------------------
    def key(self, relative: str) -> str:
        """Full object key of a path relative to the run's prefix."""
        return self.prefix + relative

    def uri(self, relative: str) -> str:
        """``s3://`` URI of a path relative to the run's prefix."""
        return contract.s3_uri(self.bucket, self.key(relative))

    # ---- the training loop's side -----------------------------------------------------------
    def save(self, step: int, local_path: Path, *, best: bool = False) -> None:
        """Queue ``local_path`` (already written) as the checkpoint of ``step``; returns at once."""
        self._raise_if_failed()
        if not local_path.is_file():
            raise FileNotFoundError(f"checkpoint file {local_path} does not exist")
        self._queue.put(_Job(step, local_path, best))

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until every queued checkpoint is uploaded (end of training, before exit)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"checkpoint uploads not done within {timeout_s}s")
            time.sleep(0.01)
        self._raise_if_failed()

    def close(self) -> None:
        """Finish pending uploads and stop the worker."""
        self.wait()
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise CheckpointError(f"checkpoint upload failed: {self._error}") from self._error

    # ---- resume -----------------------------------------------------------------------------
    def latest(self) -> tuple[int, str] | None:
        """(step, key) of the newest step checkpoint in S3, or None for a fresh run.

        The ``latest`` pointer is read first; if it is missing or names an object that is gone,
        the step checkpoints are listed instead.
        """
        pointer = self.key(contract.LATEST_POINTER)
        try:
            resp = self.client.get_object(self.bucket, pointer)
            try:
                key = resp.read().decode().strip()
            finally:
                resp.close()
                resp.release_conn()
            match = _STEP_KEY.search(key)
            if match:
                self.client.stat_object(self.bucket, key)
                return int(match.group(1)), key
        except Exception:
            log.info("no usable %s pointer; listing checkpoints", pointer)
        steps = self._listed_steps()
        if not steps:
            return None
        step = max(steps)
        return step, self.key(contract.step_checkpoint(step))

    def download(self, key: str, dest: Path) -> Path:
        """Fetch a checkpoint to ``dest`` (to load it)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.client.fget_object(self.bucket, key, str(dest))
        return dest

    def _listed_steps(self) -> list[int]:
        folder = self.key(contract.CHECKPOINTS_DIR + "/")
        steps = []
        for obj in self.client.list_objects(self.bucket, prefix=folder):
            match = _STEP_KEY.search(obj.object_name or "")
            if match:
                steps.append(int(match.group(1)))
        return steps

    # ---- the worker -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    self._upload(job)
            except BaseException as exc:
                self._error = exc
                log.error("checkpoint of step %s not uploaded: %s", job.step if job else "?", exc)
            finally:
                self._queue.task_done()

    def _upload(self, job: _Job) -> None:
        key = self.key(contract.step_checkpoint(job.step))
        size = job.path.stat().st_size
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                self.client.fput_object(self.bucket, key, str(job.path), part_size=self.part_size)
                break
            except Exception as exc:
                if attempts > self.retries:
                    raise CheckpointError(
                        f"upload of {key} failed {attempts} times; last error: {exc}"
                    ) from exc
                delay = self.backoff_s * 2 ** (attempts - 1)
                log.warning(
                    "upload of %s failed (%s); retry %d in %.1fs", key, exc, attempts, delay
                )
                time.sleep(delay)
        seconds = time.monotonic() - started
        self._put_text(contract.LATEST_POINTER, key)
        if job.best:
            self.client.copy_object(
                self.bucket, self.key(contract.BEST_CHECKPOINT), CopySource(self.bucket, key)
            )
        self._uploaded.append(job.step)
        self._prune()
        # The local copy goes only once S3 has it: a crash before this point loses nothing.
        job.path.unlink(missing_ok=True)
        if self.on_upload is not None:
            self.on_upload(UploadResult(key, size, seconds, attempts))

    def _put_text(self, relative: str, text: str) -> None:
        import io

        data = text.encode()
        self.client.put_object(self.bucket, self.key(relative), io.BytesIO(data), len(data))

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        steps = sorted(set(self._listed_steps()))
        for step in steps[: -self.keep_last]:
            self.client.remove_object(self.bucket, self.key(contract.step_checkpoint(step)))
