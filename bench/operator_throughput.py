"""Operator throughput: N Experiments applied at once, against the same N Jobs created directly.

Goals (API issue): Experiments reconciled at >= 0.5x the direct client's Job-creation rate,
apply->Job-created latency p99 <= 2 s, operator peak RSS <= 200 MB.

In one run on one local stack (started if needed, in its own state dir):

1. *direct*: an async client creates N Jobs (rendered by kexp's own renderer, so the objects
   are the same) with up to ``--concurrency`` requests in flight: this machine's limit.
2. *floor*: with no operator running, the same N Experiments and the N ConfigMaps kexp renders
   for them are created the same way, then one status write and one Event per Experiment. An
   operator that follows the design writes at least an Experiment's ConfigMap and Job, and the
   Experiment itself must be admitted first; with the API server's CPU the limit (it is, on
   two cores), their costs add, so ``1 / (1/r_experiment + 1/r_configmap + 1/r_job)`` bounds
   any such operator's Job rate from above. The bench prints that ceiling beside the goal, and
   the lower one left when each first pass also writes its status and posts its Event at once
   (kexp holds the status in memory while it is behind, so a burst pays it later).
3. *operator*: ``kexp-operator`` runs as a separate process; N Experiments are applied with the
   same concurrency; a watch on Jobs records when each Experiment's Job appears. The
   operator's CPU time and peak RSS are read from /proc. kwok completes the pods, and the run
   also reports when all N reached Succeeded.

API 429 responses are counted by the API server itself (apiserver_request_total{code="429"}).

    .venv/bin/python -m bench.operator_throughput --count 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import statistics
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import kubernetes

from bench.stacks import bench_stack, experiment_namespaces, operator_process
from kexp.dev.stack import Stack
from kexp.kube.client import sync_api_client
from kexp.kube.crds import apply_crds, load_crds
from kexp.kube.rest import ApiError, Rest, login
from kexp.render.resolved import ResolvedExperiment
from kexp.render.settings import RenderSettings
from kexp.render.training import render_config_map, render_train_job

REPO = Path(__file__).resolve().parent.parent
GOALS = {"rate_ratio": 0.5, "p99_s": 2.0, "rss_mb": 200.0}


def spec() -> dict[str, Any]:
    return {
        "algorithm": "PPO",
        "environment": {"id": "CartPole-v1"},
        "training": {"totalSteps": 1000},
        "resources": {"cpu": "10m", "memory": "16Mi"},
    }


def api_requests(stack: Stack, *marks: str) -> float:
    """Requests the API server has answered so far whose labels contain every one of
    ``marks`` (e.g. ``'code="429"'``), from its own ``apiserver_request_total``."""
    ctx = ssl.create_default_context(cafile=str(stack.pki.ca_cert))
    req = urllib.request.Request(f"{stack.api_url()}/metrics")  # noqa: S310
    req.add_header("Authorization", f"Bearer {stack.pki.admin_token.read_text().strip()}")
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:  # noqa: S310
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apiserver_request_total{") and all(m in line for m in marks)
    )


def count_429(stack: Stack) -> int:
    """Total 429s the API server has answered so far."""
    return int(api_requests(stack, 'code="429"'))


async def bounded(concurrency: int, coros: list[Any]) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def run(coro: Any) -> Any:
        async with sem:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


def rest() -> Rest:
    """A client on the same HTTP stack the operator uses, so the comparison is like for like."""
    return Rest(login(kopf.OperatorSettings()))


async def create_retrying(api: Rest, path: str, body: dict[str, Any]) -> float:
    """POST until it is not throttled; returns the time it succeeded."""
    while True:
        try:
            await api.request("POST", path, body=body)
            return time.monotonic()
        except ApiError as exc:
            if exc.status != 429:
                raise
            await asyncio.sleep(1)


def unowned(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without its owner references: no Experiment owns what the bench creates."""
    del obj["metadata"]["ownerReferences"]
    return obj


def bench_jobs(
    n: int, namespace: str, prefix: str, image: str = "kexp/trainer:bench"
) -> list[dict[str, Any]]:
    """``n`` training Jobs as kexp renders them for ``spec()``, owned by no Experiment."""
    settings = RenderSettings(trainer_image=image)
    return [
        unowned(
            render_train_job(
                ResolvedExperiment(f"{prefix}-{i}", namespace, f"uid-{i}", spec()), settings
            )
        )
        for i in range(n)
    ]


def experiment_body(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "kexp.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": f"exp-{i}"},
        "spec": spec(),
    }


async def create_all(api: Rest, concurrency: int, path: str, objs: list[dict[str, Any]]) -> float:
    """Seconds to create ``objs`` at ``path`` with ``concurrency`` requests in flight."""
    started = time.monotonic()
    await bounded(concurrency, [create_retrying(api, path, o) for o in objs])
    return time.monotonic() - started


async def direct_phase(
    n: int,
    namespace: str,
    concurrency: int,
    cpu_now: Callable[[], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Create ``n`` Jobs directly; ``cpu_now`` as in operator_phase, around the creations."""
    api = rest()
    jobs = bench_jobs(n, namespace, "direct")
    before = cpu_now() if cpu_now is not None else {}
    elapsed = await create_all(
        api, concurrency, f"/apis/batch/v1/namespaces/{namespace}/jobs", jobs
    )
    cpu = cpu_delta(before, cpu_now()) if cpu_now is not None else {}
    await api.close()
    return {"seconds": elapsed, "rate_per_s": n / elapsed, "cpu_seconds": cpu}


#: What the operator's first pass writes into a new Experiment's status (the shape of a real
#: Pending status), for the floor's cost of one status write.
PENDING_STATUS: dict[str, Any] = {
    "phase": "Pending",
    "reason": "JobCreated",
    "message": "waiting for the training pod",
    "observedGeneration": 1,
    "algorithm": "PPO",
    "environment": "CartPole-v1",
    "jobs": {"train": "exp-train"},
    "provenance": {
        "configHash": "68a5f7fdf42fd005",
        "image": "kexp/trainer:bench",
        "submittedAt": "2026-12-06T02:12:14Z",
    },
    "conditions": [
        {
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "observedGeneration": 1,
            "lastTransitionTime": "2026-12-06T02:12:14Z",
        }
        for kind, reason, message in (
            ("Validated", "Valid", "the spec is valid"),
            ("JobCreated", "JobCreated", "training Job exp-train"),
        )
    ],
}


def audit_event(namespace: str, i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"exp-{i}.bench"},
        "involvedObject": {
            "apiVersion": "kexp.io/v1alpha1",
            "kind": "Experiment",
            "name": f"exp-{i}",
            "namespace": namespace,
        },
        "type": "Normal",
        "reason": "Created",
        "message": f"created ConfigMap exp-{i}-config and Job exp-{i}-train",
        "source": {"component": "kexp-operator"},
    }


async def write_statuses(api: Rest, concurrency: int, path: str, n: int) -> float:
    """Seconds to write PENDING_STATUS into exp-0 .. exp-(n-1) at ``path`` (one merge patch
    each, ``concurrency`` in flight)."""

    async def write(i: int) -> None:
        await api.request(
            "PATCH",
            f"{path}/exp-{i}/status",
            body={"status": PENDING_STATUS},
            content_type="application/merge-patch+json",
        )

    started = time.monotonic()
    await bounded(concurrency, [write(i) for i in range(n)])
    return time.monotonic() - started


async def floor_phase(n: int, namespace: str, concurrency: int) -> dict[str, float]:
    """Rates of the other writes every Experiment costs, with no operator running: creating the
    Experiment and its ConfigMap (any operator), one status write and one Event (kexp's)."""
    api = rest()
    configmaps = [
        unowned(render_config_map(ResolvedExperiment(f"exp-{i}", namespace, f"uid-{i}", spec())))
        for i in range(n)
    ]
    exp_path = f"/apis/kexp.io/v1alpha1/namespaces/{namespace}/experiments"
    exp_s = await create_all(api, concurrency, exp_path, [experiment_body(i) for i in range(n)])
    cm_s = await create_all(
        api, concurrency, f"/api/v1/namespaces/{namespace}/configmaps", configmaps
    )

    status_s = await write_statuses(api, concurrency, exp_path, n)
    event_s = await create_all(
        api, concurrency, f"/api/v1/namespaces/{namespace}/events",
        [audit_event(namespace, i) for i in range(n)],
    )  # fmt: skip
    await api.close()
    return {
        "experiment_rate_per_s": n / exp_s,
        "configmap_rate_per_s": n / cm_s,
        "status_write_rate_per_s": n / status_s,
        "event_rate_per_s": n / event_s,
    }


#: The writes any operator of this design needs before an Experiment's Job exists, besides the
#: Job; and those kexp adds to a new Experiment's first pass.
NEEDED = ("experiment_rate_per_s", "configmap_rate_per_s")
KEXP_FIRST_PASS = ("status_write_rate_per_s", "event_rate_per_s")


def operator_ceiling(direct_rate: float, floor: dict[str, float], writes: tuple[str, ...]) -> float:
    """The most Jobs per second an operator can reach when, besides each Job, the API server
    must take the ``writes`` (keys of ``floor``) and their costs add up (its CPU the limit)."""
    return 1 / (1 / direct_rate + sum(1 / floor[w] for w in writes))


def component_cpu(stack: Stack, extra: dict[str, int] | None = None) -> dict[str, float]:
    """CPU seconds used so far by each process of the stack (and any extra named pids)."""
    pids = {**stack.running_services(), **(extra or {})}
    return {name: proc_stats(pid)[0] for name, pid in pids.items()}


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 2) for k in after}


def one_core_rate(cpu_seconds: float, count: int) -> float:
    """Objects per second a process would handle with one core to itself, from the CPU it
    spent on ``count`` of them: its bound wherever the API server has cores to spare."""
    return count / cpu_seconds if cpu_seconds > 0 else float("inf")


def cpu_shares(cpu_seconds: dict[str, float], seconds: float, cores: int) -> dict[str, float]:
    """Each process's CPU seconds as a share of what ``cores`` cores offer in ``seconds``."""
    return {name: used / (seconds * cores) for name, used in cpu_seconds.items()}


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, peak RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return cpu, hwm


async def operator_phase(
    n: int,
    namespace: str,
    concurrency: int,
    pid: int,
    timeout_s: float,
    cpu_now: Callable[[], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Apply ``n`` Experiments to the operator ``pid`` watches and time their Jobs.

    ``cpu_now`` (CPU seconds by process so far) is read when the first apply is sent and when
    the last Job appears: the result's ``burst_cpu_seconds`` says where the machine's CPU went
    while the Jobs were being created, apart from the pods' churn that follows.
    """
    api = rest()
    job_seen: dict[str, float] = {}
    all_seen = asyncio.Event()
    cpu_marks: list[dict[str, float]] = []

    async def watch_jobs() -> None:
        # The API server may end a watch (a 429 while a fresh stack's storage initialises): a
        # new one lists what exists as ADDED, so nothing is missed, only seen late.
        while True:
            with contextlib.suppress(ApiError):
                async for event in api.watch(f"/apis/batch/v1/namespaces/{namespace}/jobs"):
                    if event["type"] != "ADDED":
                        continue
                    labels = event["object"]["metadata"].get("labels", {})
                    owner = labels.get("kexp.io/experiment")
                    if owner and owner not in job_seen:
                        job_seen[owner] = time.monotonic()
                        if len(job_seen) == n:
                            if cpu_now is not None:
                                cpu_marks.append(cpu_now())
                            all_seen.set()
                            return
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch_jobs())
    await asyncio.sleep(1)  # the watch is established before the first apply
    cpu0, _ = proc_stats(pid)
    bodies = [experiment_body(i) for i in range(n)]
    if cpu_now is not None:
        cpu_marks.append(cpu_now())
    started = time.monotonic()
    exp_path = f"/apis/kexp.io/v1alpha1/namespaces/{namespace}/experiments"
    applied = await bounded(concurrency, [create_retrying(api, exp_path, b) for b in bodies])
    apply_s = time.monotonic() - started
    await asyncio.wait_for(all_seen.wait(), timeout=timeout_s)
    all_jobs_s = max(job_seen.values()) - started
    latencies = sorted(job_seen[f"exp-{i}"] - applied[i] for i in range(n))

    # Every Experiment through to the end (kwok completes the pods). A watch, not a list per
    # second: listing 1000 objects every second was itself a large share of the API server's
    # CPU and would have charged the operator with the benchmark's own load.
    finished_s: float | None = None
    phase_of: dict[str, str] = {}

    async def watch_experiments() -> None:
        nonlocal finished_s
        terminal = ("Succeeded", "Failed")
        done = 0
        while True:  # the API server may close a watch; a new one starts with a full listing
            with contextlib.suppress(ApiError):
                async for event in api.watch(exp_path):
                    if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                        break  # an ERROR (a Status object): watch again
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    phase = (obj.get("status") or {}).get("phase") or "None"
                    done += (phase in terminal) - (phase_of.get(name) in terminal)
                    phase_of[name] = phase
                    if done == n:
                        finished_s = time.monotonic() - started
                        return
            await asyncio.sleep(0.2)

    with contextlib.suppress(TimeoutError):  # reported as not finished
        await asyncio.wait_for(watch_experiments(), timeout=timeout_s)
    phases: dict[str, int] = {}
    for phase in phase_of.values():
        phases[phase] = phases.get(phase, 0) + 1
    cpu1, hwm = proc_stats(pid)
    watcher.cancel()
    await api.close()
    return {
        "apply_seconds": apply_s,
        "jobs_created_seconds": all_jobs_s,
        "rate_per_s": n / all_jobs_s,
        "latency_p50_s": statistics.median(latencies),
        "latency_p99_s": latencies[min(n - 1, int(0.99 * n))],
        "latency_max_s": latencies[-1],
        "all_finished_seconds": finished_s,
        "phases": phases,
        "operator_cpu_seconds": cpu1 - cpu0,
        "operator_peak_rss_mb": hwm / 2**20,
        "burst_cpu_seconds": cpu_delta(*cpu_marks) if len(cpu_marks) == 2 else {},
    }


def wait_gone(core: Any, *namespaces: str, timeout_s: float) -> None:
    """Until the namespaces (and so everything in them) are deleted."""
    deadline = time.monotonic() + timeout_s
    left = set(namespaces)
    while left and time.monotonic() < deadline:
        left = {
            ns for ns in left if any(n.metadata.name == ns for n in core.list_namespace().items)
        }
        time.sleep(1)
    if left:
        raise TimeoutError(f"namespaces {sorted(left)} still there after {timeout_s:.0f}s")


def wait_quiet(stack: Stack, *services: str, idle_share: float = 0.05, max_s: float = 120) -> None:
    """Until the named processes of the stack use under ``idle_share`` of a core for a second:
    pods of an earlier phase still running would charge the next phase with their churn."""
    pids = {name: pid for name, pid in stack.running_services().items() if name in services}
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        before = {name: proc_stats(pid)[0] for name, pid in pids.items()}
        time.sleep(1)
        if all(proc_stats(pid)[0] - before[name] < idle_share for name, pid in pids.items()):
            return
    print(f"warning: {', '.join(services)} still busy after {max_s:.0f}s; measuring anyway")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--port-base", type=int, default=29600)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="Reuse a stack here (default: a temporary one, removed after).",
    )
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    with bench_stack(args.state_dir, args.port_base) as stack:
        api = sync_api_client(stack.kubeconfig)
        apply_crds(api, load_crds(REPO / "crds"))
        suffix = str(int(time.time()))
        direct_ns, floor_ns = f"bench-direct-{suffix}", f"bench-floor-{suffix}"
        op_ns = f"bench-op-{suffix}"
        experiment_namespaces(api, stack, direct_ns, floor_ns, op_ns)
        os.environ["KUBECONFIG"] = str(stack.kubeconfig)

        before = count_429(stack)
        own = {"bench client": os.getpid()}
        direct = asyncio.run(
            direct_phase(
                args.count, direct_ns, args.concurrency, cpu_now=lambda: component_cpu(stack, own)
            )
        )
        direct["api_429"] = count_429(stack) - before
        time.sleep(5)  # the direct Jobs' pods start meanwhile; the floor is measured without them
        wait_quiet(stack, "kube-controller-manager", "kwok")
        floor = asyncio.run(floor_phase(args.count, floor_ns, args.concurrency))
        # Both phases' objects go, and the operator starts on a quiet cluster.
        core = kubernetes.client.CoreV1Api(api)
        for ns in (direct_ns, floor_ns):
            core.delete_namespace(ns)
        wait_gone(core, direct_ns, floor_ns, timeout_s=args.timeout)
        wait_quiet(stack, "kube-controller-manager", "kwok")

        with operator_process(stack, op_ns) as op:
            before = count_429(stack)
            extra = {"bench client": os.getpid(), "kexp operator": op.pid}
            cpu_before = component_cpu(stack, extra)
            operated = asyncio.run(
                operator_phase(
                    args.count,
                    op_ns,
                    args.concurrency,
                    op.pid,
                    args.timeout,
                    cpu_now=lambda: component_cpu(stack, extra),
                )
            )
            operated["cpu_seconds"] = cpu_delta(cpu_before, component_cpu(stack, extra))
            operated["api_429"] = count_429(stack) - before
        api.close()

    ratio = operated["rate_per_s"] / direct["rate_per_s"]
    applied_rate = args.count / operated["apply_seconds"]
    ceiling = operator_ceiling(direct["rate_per_s"], floor, NEEDED) / direct["rate_per_s"]
    kexp_ceiling = (
        operator_ceiling(direct["rate_per_s"], floor, NEEDED + KEXP_FIRST_PASS)
        / direct["rate_per_s"]
    )
    print(f"{args.count} objects, {args.concurrency} requests in flight, 2-core machine")
    print(f"{'':<34}{'direct client':>16}{'kexp operator':>16}")
    print(
        f"{'Jobs created per second':<34}{direct['rate_per_s']:>16.1f}"
        f"{operated['rate_per_s']:>16.1f}"
    )
    print(f"{'Experiments applied per second':<34}{'-':>16}{applied_rate:>16.1f}")
    print(
        f"{'seconds to create all Jobs':<34}{direct['seconds']:>16.1f}"
        f"{operated['jobs_created_seconds']:>16.1f}"
    )
    print(f"{'API 429 responses':<34}{direct['api_429']:>16}{operated['api_429']:>16}")
    print(
        f"{'apply->Job latency p50 / p99 (s)':<34}{'-':>16}"
        f"{operated['latency_p50_s']:>7.2f} / {operated['latency_p99_s']:<6.2f}"
    )
    finished = operated["all_finished_seconds"] or -1
    print(f"{'all finished after (s)':<34}{'-':>16}{finished:>16.1f}")
    print(f"{'final phases':<34}{'-':>16}  {json.dumps(operated['phases'])}")
    print(f"{'operator CPU seconds':<34}{'-':>16}{operated['operator_cpu_seconds']:>16.1f}")
    print(f"{'operator peak RSS (MB)':<34}{'-':>16}{operated['operator_peak_rss_mb']:>16.1f}")
    print(f"floor, with no operator running ({args.concurrency} requests in flight):")
    for label, key in (
        ("Experiments created per second", "experiment_rate_per_s"),
        ("ConfigMaps created per second", "configmap_rate_per_s"),
        ("status writes per second", "status_write_rate_per_s"),
        ("Events created per second", "event_rate_per_s"),
    ):
        print(f"  {label:<32}{floor[key]:>16.1f}")
    print(
        "CPU seconds by process (direct: while its Jobs were created; operator: to all finished):"
    )
    for name in operated["cpu_seconds"]:
        print(
            f"  {name:<32}{direct['cpu_seconds'].get(name, 0.0):>16.1f}"
            f"{operated['cpu_seconds'][name]:>16.1f}"
        )
    cores = os.cpu_count() or 1
    print(
        f"share of the machine's {cores} cores while each side created its Jobs "
        f"({direct['seconds']:.1f} s / {operated['jobs_created_seconds']:.1f} s):"
    )
    shares = (
        cpu_shares(direct["cpu_seconds"], direct["seconds"], cores),
        cpu_shares(operated["burst_cpu_seconds"], operated["jobs_created_seconds"], cores),
    )
    for name in operated["burst_cpu_seconds"]:
        print(f"  {name:<32}{shares[0].get(name, 0.0):>16.0%}{shares[1][name]:>16.0%}")
    print(f"  {'all':<32}{sum(shares[0].values()):>16.0%}{sum(shares[1].values()):>16.0%}")
    # On a machine with cores to spare, each side is held by its own Python process (one core
    # at a time, the GIL): the client by what a Job costs it, the operator by what the path from
    # an Experiment's event to its created Job costs it (the events of earlier runs included).
    client_rate = one_core_rate(direct["cpu_seconds"]["bench client"], args.count)
    operator_rate = one_core_rate(operated["burst_cpu_seconds"]["kexp operator"], args.count)
    print(
        f"one core each: the direct client spent {1000 / client_rate:.2f} ms of CPU a Job "
        f"(at most {client_rate:.0f} Jobs/s), the operator {1000 / operator_rate:.2f} ms an "
        f"Experiment until the last Job (at most {operator_rate:.0f}/s): where the API server "
        f"has cores to spare, the ratio is bounded by {operator_rate / client_rate:.2f}"
    )
    met = {
        "rate_ratio": ratio >= GOALS["rate_ratio"],
        "p99_s": operated["latency_p99_s"] <= GOALS["p99_s"],
        "rss_mb": operated["operator_peak_rss_mb"] <= GOALS["rss_mb"],
    }
    print(
        f"rate ratio {ratio:.2f} (goal >= 0.5): {'MET' if met['rate_ratio'] else 'MISSED'}; "
        f"p99 {operated['latency_p99_s']:.2f}s (goal <= 2): "
        f"{'MET' if met['p99_s'] else 'MISSED'}; RSS {operated['operator_peak_rss_mb']:.0f} MB "
        f"(goal <= 200): {'MET' if met['rss_mb'] else 'MISSED'}"
    )
    print(
        f"ceiling: an operator writing only each Experiment's ConfigMap and Job, after the API "
        f"server admitted the Experiment, reaches at most {ceiling:.2f}x the direct rate here; "
        f"{kexp_ceiling:.2f}x if each first pass also wrote its status and Event at once"
    )
    print(
        json.dumps(
            {
                "bench": "operator_throughput",
                "count": args.count,
                "concurrency": args.concurrency,
                "direct": direct,
                "operator": operated,
                "rate_ratio": ratio,
                "applied_rate_per_s": applied_rate,
                "floor": floor,
                "ceiling_ratio": ceiling,
                "ceiling_ratio_with_first_pass": kexp_ceiling,
                "one_core_rate_per_s": {"direct client": client_rate, "operator": operator_rate},
                "goals": GOALS,
                "met": met,
            }
        )
    )


if __name__ == "__main__":
    main()
