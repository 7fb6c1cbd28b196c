"""What other workloads cost the operator: Jobs it does not own, run where it watches.

A shared cluster runs more than kexp's Jobs, and an operator started with ``--all-namespaces``
watches every namespace. Its handlers only take kexp's own Jobs and pods (the
``app.kubernetes.io/managed-by=kexp`` label), but unless the API server applies that filter, every
event of every other Job and pod still reaches the operator and is decoded first.

In each round ``--count`` Jobs without kexp's labels are created (``--concurrency`` requests in
flight) in a namespace a freshly started ``kexp-operator`` watches; kwok runs and completes
their pods. The bench reports the operator's CPU seconds from the first creation until all of
them have completed, and its CPU over the same length of time again with nothing happening
(its idle cost, measured right after).

``--kexp-labels`` keeps kexp's labels on the Jobs and their pods (still owned by no
Experiment): the API server then sends the operator every event of theirs, and the round
measures what the operator's watch path costs per Job and pod before any pass runs (the
Experiment they name does not exist). The operator watches Jobs and pods only in namespaces
that have Experiments, so such a round first applies one and waits for its Job.

``--variant NAME:VAR=VALUE,...`` runs the operator with extra environment; with
``PYTHONPATH`` pointing at another checkout's ``operator/`` it compares revisions:

    .venv/bin/python -m bench.operator_foreign_load --count 1000
    .venv/bin/python -m bench.operator_foreign_load --count 1000 --kexp-labels
    git worktree add /tmp/old <rev>
    .venv/bin/python -m bench.operator_foreign_load --rounds 2 \\
        --variant new:PYTHONPATH= --variant old:PYTHONPATH=/tmp/old/operator
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import kubernetes

from bench.operator_settings_ab import parse_variant
from bench.operator_throughput import (
    REPO,
    bench_jobs,
    create_all,
    experiment_body,
    proc_stats,
    rest,
    wait_gone,
    wait_quiet,
)
from bench.stacks import bench_stack, experiment_namespaces, operator_process
from kexp.dev.stack import Stack
from kexp.kube.client import sync_api_client
from kexp.kube.crds import apply_crds, load_crds

#: How long the foreign Jobs may take to complete (kwok completes them in seconds).
COMPLETION_TIMEOUT_S = 600.0


def foreign(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` (owned by nothing) as another workload's: no kexp label on it or on its pods."""
    job["metadata"]["labels"] = {"app": "someone-else"}
    job["spec"]["template"]["metadata"]["labels"] = {"app": "someone-else"}
    return job


def foreign_jobs(n: int, namespace: str, kexp_labels: bool = False) -> list[dict[str, Any]]:
    """``n`` Jobs no Experiment owns; with ``kexp_labels`` labelled as kexp labels its own."""
    jobs = bench_jobs(n, namespace, "other", "other/trainer:bench")
    return jobs if kexp_labels else [foreign(job) for job in jobs]


async def create_jobs(namespace: str, jobs: list[dict[str, Any]], concurrency: int) -> None:
    client = rest()
    try:
        await create_all(client, concurrency, f"/apis/batch/v1/namespaces/{namespace}/jobs", jobs)
    finally:
        await client.close()


def completed_jobs(batch: Any, namespace: str, prefix: str) -> int:
    return sum(
        1
        for j in batch.list_namespaced_job(namespace).items
        if j.metadata.name.startswith(prefix) and (j.status.succeeded or 0)
    )


def watched_from_now_on(api: Any, namespace: str) -> None:
    """Apply one Experiment and wait for its Job: the operator now watches the namespace."""
    custom = kubernetes.client.CustomObjectsApi(api)
    batch = kubernetes.client.BatchV1Api(api)
    custom.create_namespaced_custom_object(
        "kexp.io", "v1alpha1", namespace, "experiments", experiment_body(0)
    )
    deadline = time.monotonic() + 60
    while not batch.list_namespaced_job(namespace).items:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the operator made no Job in {namespace} within 60 s")
        time.sleep(0.2)


def one_round(
    stack: Stack,
    api: Any,
    name: str,
    env: dict[str, str],
    n: int,
    concurrency: int,
    kexp_labels: bool = False,
) -> dict[str, object]:
    core, batch = kubernetes.client.CoreV1Api(api), kubernetes.client.BatchV1Api(api)
    ns = f"bench-foreign-{name}-{int(time.time())}"
    experiment_namespaces(api, stack, ns)
    wait_quiet(stack, "kube-controller-manager", "kwok")
    jobs = foreign_jobs(n, ns, kexp_labels)
    with operator_process(stack, ns, env) as op:
        if kexp_labels:
            watched_from_now_on(api, ns)
        cpu0 = proc_stats(op.pid)[0]
        started = time.monotonic()
        asyncio.run(create_jobs(ns, jobs, concurrency))
        while (done := completed_jobs(batch, ns, "other-")) < n:
            if time.monotonic() - started > COMPLETION_TIMEOUT_S:
                raise TimeoutError(
                    f"{done} of {n} foreign Jobs completed after {COMPLETION_TIMEOUT_S:.0f}s"
                )
            time.sleep(1)
        busy_s = time.monotonic() - started
        busy_cpu = proc_stats(op.pid)[0] - cpu0
        # The same length of time again with nothing happening: the operator's own idle cost.
        idle0 = proc_stats(op.pid)[0]
        time.sleep(busy_s)
        idle_cpu = proc_stats(op.pid)[0] - idle0
        rss_mb = proc_stats(op.pid)[1] / 2**20
    core.delete_namespace(ns)
    wait_gone(core, ns, timeout_s=600)
    return {
        "variant": name,
        "foreign_jobs": n,
        "kexp_labels": kexp_labels,
        "seconds_until_all_completed": round(busy_s, 1),
        "operator_cpu_s": round(busy_cpu, 2),
        "operator_cpu_s_idle_as_long": round(idle_cpu, 2),
        "operator_cpu_ms_per_foreign_job": round(1000 * (busy_cpu - idle_cpu) / n, 3),
        "operator_peak_rss_mb": round(rss_mb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--kexp-labels",
        action="store_true",
        help="label the Jobs and pods as kexp's own (the operator then receives their events)",
    )
    parser.add_argument("--variant", action="append", type=parse_variant, default=None)
    parser.add_argument("--port-base", type=int, default=29900)
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()
    variants = args.variant or [("current", {})]
    with bench_stack(args.state_dir, args.port_base) as stack:
        api = sync_api_client(stack.kubeconfig)
        apply_crds(api, load_crds(REPO / "crds"))
        os.environ["KUBECONFIG"] = str(stack.kubeconfig)
        for _round in range(args.rounds):
            for name, env in variants:
                row = one_round(
                    stack, api, name, env, args.count, args.concurrency, args.kexp_labels
                )
                print(json.dumps(row), flush=True)
        api.close()


if __name__ == "__main__":
    main()
