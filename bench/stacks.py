"""The local stack and operator process the stack benchmarks share."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kexp.dev import cluster
from kexp.dev.stack import Stack

#: kopf's start-up (login, discovery, initial listings) before a benchmark starts its clock.
OPERATOR_STARTUP_S = 4.0


@contextlib.contextmanager
def bench_stack(state_dir: Path | None, port_base: int) -> Iterator[Stack]:
    """A started local stack: the one at ``state_dir`` (left running), or a temporary one that
    is stopped and removed afterwards."""
    with contextlib.ExitStack() as cleanup:
        if state_dir is None:
            state = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="kexp-bench-")))
        else:
            state = state_dir
        stack = Stack(state)
        stack.up(port_base=port_base, log=lambda _m: None)
        if state_dir is None:
            cleanup.callback(stack.down)
        yield stack


def experiment_namespaces(api: Any, stack: Stack, *names: str) -> None:
    """Namespaces with the stack's S3 Secret, as the operator expects of each."""
    for ns in names:
        cluster.ensure_namespace(api, ns)
        cluster.apply_s3_secret(api, ns, stack.s3_credentials())


@contextlib.contextmanager
def operator_process(
    stack: Stack, namespace: str, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``kexp-operator`` watching ``namespace`` (log in the stack's logs/), stopped after."""
    full_env = {
        **os.environ,
        "KUBECONFIG": str(stack.kubeconfig),
        "KEXP_OPERATOR_METRICS_PORT": "0",
        **(env or {}),
    }
    log_path = stack.state_dir / "logs" / "bench-operator.log"
    with log_path.open("ab") as log:
        op = subprocess.Popen(
            [sys.executable, "-m", "kexp.handlers.run", "--namespace", namespace,
             "--liveness=off"],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            time.sleep(OPERATOR_STARTUP_S)
            yield op
        finally:
            op.terminate()
            op.wait(timeout=30)
