"""Checkpoint upload: kexp's store against a raw MinIO put_object, and the training-loop stall.

Goals (trainer issue): upload MB/s >= 0.9x a raw ``minio`` client ``put_object`` of the same
bytes to the same server; the longest training-loop stall while a 100 MB checkpoint uploads
<= 50 ms.

In one run on one local MinIO (the local stack's, started if needed):

1. *raw*: ``put_object`` of a ``--size-mb`` file's bytes, ``--runs`` times (median);
2. *kexp*: ``CheckpointStore.save`` of the same file, timed from save to upload confirmed
   (pointer update included), ``--runs`` times (median);
3. *stall*: a stand-in training loop (a fixed slice of pure-Python work per step, like the
   Python side of an optimizer step) runs while the store uploads; the longest gap between
   two steps, minus the step's own time, is the stall the upload caused. The same loop alone
   gives the baseline.

    .venv/bin/python -m bench.checkpoint_upload --size-mb 100 --runs 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.stacks import bench_stack
from kexp.storage.s3 import ensure_bucket, s3_client
from kexp_trainers.runtime.checkpoints import PART_SIZE, CheckpointStore

GOALS = {"ratio": 0.9, "stall_ms": 50.0}


def step_work() -> int:
    """One 'training step' of pure-Python work (about a millisecond)."""
    return sum(i * i for i in range(20_000))


def loop_gaps(stop: threading.Event, gaps: list[float]) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        step_work()
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=29700)
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()

    with (
        bench_stack(args.state_dir, args.port_base) as stack,
        tempfile.TemporaryDirectory(prefix="kexp-bench-") as tmp,
    ):
        client = s3_client(stack.s3_credentials())
        bucket = "bench-checkpoints"
        ensure_bucket(client, bucket)
        size = args.size_mb * 1024 * 1024
        data = os.urandom(size)
        work = Path(tmp) / "work"
        work.mkdir()

        # Interleaved, so neither side gets all the cold or all the warm runs.
        raw_s: list[float] = []
        kexp_s: list[float] = []
        for i in range(args.runs):
            started = time.perf_counter()
            client.put_object(bucket, f"raw/{i}.pt", io.BytesIO(data), size, part_size=PART_SIZE)
            raw_s.append(time.perf_counter() - started)

            done = threading.Event()
            store = CheckpointStore(
                client, bucket, f"kexp/{i}/", on_upload=lambda _r, d=done: d.set()
            )
            local = work / f"{i}.pt"
            local.write_bytes(data)
            started = time.perf_counter()
            store.save(1, local)
            done.wait()
            kexp_s.append(time.perf_counter() - started)
            store.close()

        # Baseline: the loop alone.
        stop, alone = threading.Event(), []
        t = threading.Thread(target=loop_gaps, args=(stop, alone))
        t.start()
        time.sleep(2)
        stop.set()
        t.join()

        # The loop while a checkpoint uploads (save() itself is called from the loop's thread
        # in a real trainer; here its own duration is measured separately).
        stop, during = threading.Event(), []
        done = threading.Event()
        store = CheckpointStore(client, bucket, "stall/", on_upload=lambda _r: done.set())
        local = work / "stall.pt"
        local.write_bytes(data)
        t = threading.Thread(target=loop_gaps, args=(stop, during))
        t.start()
        time.sleep(0.3)
        save_started = time.perf_counter()
        store.save(1, local)
        save_call_ms = (time.perf_counter() - save_started) * 1000
        done.wait()
        stop.set()
        t.join()
        store.close()

    mb = size / 2**20
    raw_rate = mb / statistics.median(raw_s)
    kexp_rate = mb / statistics.median(kexp_s)
    ratio = kexp_rate / raw_rate
    step_ms = statistics.median(alone) * 1000
    stall_ms = max(during) * 1000 - step_ms
    base_stall_ms = max(alone) * 1000 - step_ms
    print(f"{args.size_mb} MB checkpoint, {args.runs} runs, local MinIO, 2-core machine")
    print(f"{'':<42}{'raw put_object':>16}{'kexp store':>16}")
    print(f"{'upload MB/s (median)':<42}{raw_rate:>16.1f}{kexp_rate:>16.1f}")
    print(
        f"{'seconds (median)':<42}{statistics.median(raw_s):>16.2f}"
        f"{statistics.median(kexp_s):>16.2f}"
    )
    print(f"training step alone: {step_ms:.2f} ms; longest extra gap alone {base_stall_ms:.1f} ms")
    print(
        f"longest training-loop stall during the upload: {stall_ms:.1f} ms "
        f"(save() call itself: {save_call_ms:.2f} ms)"
    )
    met = {"ratio": ratio >= GOALS["ratio"], "stall_ms": stall_ms <= GOALS["stall_ms"]}
    print(
        f"ratio {ratio:.2f} (goal >= 0.9): {'MET' if met['ratio'] else 'MISSED'}; "
        f"stall {stall_ms:.1f} ms (goal <= 50): {'MET' if met['stall_ms'] else 'MISSED'}"
    )
    print(
        json.dumps(
            {
                "bench": "checkpoint_upload",
                "size_mb": args.size_mb,
                "runs": args.runs,
                "raw_mb_s": raw_rate,
                "kexp_mb_s": kexp_rate,
                "ratio": ratio,
                "step_ms": step_ms,
                "stall_ms": stall_ms,
                "baseline_stall_ms": base_stall_ms,
                "save_call_ms": save_call_ms,
                "goals": GOALS,
                "met": met,
            }
        )
    )


if __name__ == "__main__":
    main()
