"""The operator phase of ``bench/operator_throughput.py``, alternating between operator settings.

Two runs of the whole throughput bench differ by 20-30% on this machine from one run to the
next, more than most changes are worth, so a setting is judged here by alternating runs on one
stack: a warm-up phase (discarded: the first burst on a fresh stack is slower), then each
variant in turn, ``--rounds`` times. Each phase applies N Experiments in a fresh namespace with
the operator started with the variant's environment, waits until all are Succeeded, deletes
the namespace and waits until the controller manager and kwok are idle.

A variant is ``NAME:VAR=VALUE[,VAR=VALUE...]``; the default compares status writes held while
the operator is behind (``KEXP_DEFER_STATUS_ABOVE``, see docs/operator.md) with written at once.

    .venv/bin/python -m bench.operator_settings_ab --count 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import kubernetes

from bench.operator_throughput import (
    api_requests,
    component_cpu,
    cpu_delta,
    cpu_shares,
    operator_phase,
    wait_gone,
    wait_quiet,
)
from bench.stacks import bench_stack, experiment_namespaces, operator_process
from kexp.dev.stack import Stack
from kexp.kube.client import sync_api_client
from kexp.kube.crds import apply_crds, load_crds

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VARIANTS = ("held:KEXP_DEFER_STATUS_ABOVE=32", "at-once:KEXP_DEFER_STATUS_ABOVE=0")


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME:VAR=VALUE,...`` as a name and an environment."""
    name, _, assignments = text.partition(":")
    pairs = [pair.split("=", 1) for pair in assignments.split(",") if pair]
    env = {pair[0]: pair[1] for pair in pairs if len(pair) == 2 and pair[0]}
    if not name or not env or len(env) != len(pairs):
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME:VAR=VALUE[,...]")
    return name, env


def status_writes(stack: Stack) -> float:
    """Experiment status PATCHes the API server has answered so far."""
    return api_requests(stack, 'resource="experiments"', 'subresource="status"', 'verb="PATCH"')


def one_phase(
    stack: Stack, api: object, name: str, env: dict[str, str], n: int, concurrency: int
) -> dict[str, object]:
    core = kubernetes.client.CoreV1Api(api)
    ns = f"bench-ab-{name}-{int(time.time())}"
    experiment_namespaces(api, stack, ns)
    wait_quiet(stack, "kube-controller-manager", "kwok")
    writes_before = status_writes(stack)
    with operator_process(stack, ns, env) as op:
        cpu_before = component_cpu(stack)
        own = {"kexp operator": op.pid}
        result = asyncio.run(
            operator_phase(
                n, ns, concurrency, op.pid, 600, cpu_now=lambda: component_cpu(stack, own)
            )
        )
        cpu = cpu_delta(cpu_before, component_cpu(stack))
    row: dict[str, object] = {
        "variant": name,
        "jobs_per_s": round(result["rate_per_s"], 1),
        "p50_s": round(result["latency_p50_s"], 2),
        "p99_s": round(result["latency_p99_s"], 2),
        "all_finished_s": result["all_finished_seconds"],
        "phases": result["phases"],
        "operator_cpu_s": round(result["operator_cpu_seconds"], 1),
        "operator_peak_rss_mb": round(result["operator_peak_rss_mb"], 1),
        "status_writes": status_writes(stack) - writes_before,
        "kube_apiserver_cpu_s": cpu.get("kube-apiserver"),
        # Where the machine's CPU went while the Jobs were being created.
        "burst_cpu_share": {
            name: round(share, 2)
            for name, share in cpu_shares(
                result["burst_cpu_seconds"], result["jobs_created_seconds"], os.cpu_count() or 1
            ).items()
        },
    }
    core.delete_namespace(ns)
    wait_gone(core, ns, timeout_s=600)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", type=parse_variant, default=None)
    parser.add_argument("--port-base", type=int, default=29800)
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()
    variants = args.variant or [parse_variant(v) for v in DEFAULT_VARIANTS]
    rows: list[dict[str, object]] = []
    with bench_stack(args.state_dir, args.port_base) as stack:
        api = sync_api_client(stack.kubeconfig)
        apply_crds(api, load_crds(REPO / "crds"))
        os.environ["KUBECONFIG"] = str(stack.kubeconfig)
        warm_name, warm_env = variants[0]
        warm = one_phase(stack, api, f"warmup-{warm_name}", warm_env, args.count, args.concurrency)
        print("warm-up (discarded):", json.dumps(warm), flush=True)
        for _round in range(args.rounds):
            for name, env in variants:
                row = one_phase(stack, api, name, env, args.count, args.concurrency)
                rows.append(row)
                print(json.dumps(row), flush=True)
        api.close()
    print(f"{args.count} Experiments a phase, {args.concurrency} applies in flight; min-max:")
    for name, _env in variants:
        mine = [r for r in rows if r["variant"] == name]
        cells = []
        for key in ("jobs_per_s", "p50_s", "p99_s", "operator_peak_rss_mb", "status_writes"):
            values = [float(str(r[key])) for r in mine]
            cells.append(f"{key} {min(values):g}-{max(values):g}")
        print(f"  {name:<10} " + ", ".join(cells))


if __name__ == "__main__":
    main()
