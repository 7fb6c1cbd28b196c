"""Harvest latency and CLI speed on the real stack.

Goals (harvest and CLI issue): results in status within 2 s of the Job completing, and
``kexp list`` / ``kexp export`` over 5,000 experiments in <= 3 s each.

1. *harvest*: ``--count`` (200) Experiments whose simulated pods end at staggered times;
   each one's results.json is put into MinIO before its pod ends. A watch on Jobs records
   when each Job's Complete condition is seen and a watch on Experiments when its
   ``status.results`` appears; the difference is the harvest latency (both seen by this
   process's clock, so clock skew cannot flatter it).
2. *cli*: ``--cli-count`` (5000) Experiments with realistic status (scores, provenance,
   checkpoints; half from a template) written straight to the API server, no operator;
   then ``kexp list`` and ``kexp export`` run as separate processes, as a user runs them
   (Python start-up included), ``--repeat`` times each.

    .venv/bin/python -m bench.harvest_and_cli
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.operator_throughput import bounded, rest
from bench.stacks import bench_stack, experiment_namespaces, operator_process
from kexp.api import contract
from kexp.api.reports import CheckpointsReport, ResultsReport
from kexp.dev.stack import Stack
from kexp.kube.client import sync_api_client
from kexp.kube.crds import apply_crds, load_crds
from kexp.kube.rest import ApiError, Rest
from kexp.storage.s3 import s3_client

REPO = Path(__file__).resolve().parent.parent
GOALS = {"harvest_p99_s": 2.0, "cli_s": 3.0}
EXP_PATH = "/apis/kexp.io/v1alpha1/namespaces/{ns}/experiments"


async def retrying(api: Rest, method: str, path: str, **kw: Any) -> Any:
    while True:
        try:
            return await api.request(method, path, **kw)
        except ApiError as exc:
            if exc.status != 429:
                raise
            await asyncio.sleep(0.5)


def experiment(name: str, run_for_s: float) -> dict[str, Any]:
    return {
        "apiVersion": "kexp.io/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name, "annotations": {"sim.kexp.io/run-for": f"{run_for_s:.2f}s"}},
        "spec": {
            "algorithm": "PPO",
            "environment": {"id": "CartPole-v1"},
            "training": {"totalSteps": 1000},
            "objective": {"metric": "reward"},
            "resources": {"cpu": "10m", "memory": "16Mi"},
        },
    }


# ---- 1. harvest latency -----------------------------------------------------------------------
async def harvest_phase(stack: Stack, ns: str, n: int, timeout_s: float) -> dict[str, Any]:
    api = rest()
    s3 = s3_client(stack.s3_credentials())
    complete_at: dict[str, float] = {}
    harvested_at: dict[str, float] = {}
    done = asyncio.Event()

    async def watch_jobs() -> None:
        while True:
            async for event in api.watch(f"/apis/batch/v1/namespaces/{ns}/jobs"):
                obj = event.get("object") or {}
                owner = (obj.get("metadata", {}).get("labels") or {}).get(contract.LABEL_EXPERIMENT)
                conds = (obj.get("status") or {}).get("conditions") or []
                if (
                    owner
                    and owner not in complete_at
                    and any(
                        c.get("type") == "Complete" and c.get("status") == "True" for c in conds
                    )
                ):
                    complete_at[owner] = time.monotonic()

    async def watch_experiments() -> None:
        while True:
            async for event in api.watch(EXP_PATH.format(ns=ns)):
                obj = event.get("object") or {}
                name = obj.get("metadata", {}).get("name")
                if name and name not in harvested_at and (obj.get("status") or {}).get("results"):
                    harvested_at[name] = time.monotonic()
                    if len(harvested_at) == n:
                        done.set()
                        return

    jobs_task = asyncio.create_task(watch_jobs())
    exps_task = asyncio.create_task(watch_experiments())
    await asyncio.sleep(1)
    # Pods end 25-35 s after creation, staggered: the operator harvests a steady trickle,
    # as a lab's runs finish, not 200 at the same instant.
    bodies = [experiment(f"h-{i}", 25 + 10 * i / n) for i in range(n)]
    created = await bounded(
        20, [retrying(api, "POST", EXP_PATH.format(ns=ns), body=b) for b in bodies]
    )

    def put_results(obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        prefix = contract.s3_prefix(ns, meta["name"], meta["uid"])
        report = ResultsReport(
            outcome="succeeded",
            scores={"reward": 100.0 + len(meta["name"]), "reward_std": 1.0},
            step=1000,
            checkpoints=CheckpointsReport(
                best=contract.s3_uri(contract.DEFAULT_BUCKET, prefix + contract.BEST_CHECKPOINT)
            ),
        )
        data = report.to_json().encode()
        s3.put_object(
            contract.DEFAULT_BUCKET, prefix + contract.RESULTS_FILE, io.BytesIO(data), len(data)
        )

    await asyncio.gather(*(asyncio.to_thread(put_results, obj) for obj in created))
    await asyncio.wait_for(done.wait(), timeout=timeout_s)
    await asyncio.sleep(1)  # a Complete seen just after its harvest still gets recorded
    jobs_task.cancel()
    exps_task.cancel()
    await api.close()
    lat = sorted(harvested_at[k] - complete_at[k] for k in harvested_at if k in complete_at)
    return {
        "experiments": n,
        "measured": len(lat),
        "p50_s": statistics.median(lat),
        "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "max_s": lat[-1],
        "min_s": lat[0],
    }


# ---- 2. CLI over many experiments ------------------------------------------------------------
def recorded_status(i: int) -> dict[str, Any]:
    """The status of a finished run, as the operator writes it."""
    return {
        "phase": "Succeeded" if i % 10 else "Failed",
        "reason": "JobComplete" if i % 10 else "TrainerFailed",
        "algorithm": "PPO" if i % 2 else "SAC",
        "environment": "highway-fast-v0",
        "score": 0.5 + (i % 97) / 200,
        "results": {
            "pdm_score": 0.5 + (i % 97) / 200,
            "collision_rate": (i % 13) / 100,
            "ego_progress": 0.8,
            "reward": float(i % 300),
            "reward_std": 3.0,
        },
        "checkpoints": {
            "best": f"s3://experiments/ns/e-{i}/uid/checkpoints/best.pt",
            "latest": f"s3://experiments/ns/e-{i}/uid/checkpoints/step-100000.pt",
            "bestStep": 100000,
        },
        "provenance": {
            "gitCommit": f"{i:040x}",
            "gitBranch": "main",
            "gitDirty": False,
            "configHash": f"{i:016x}",
            "image": "ghcr.io/kexp-io/kexp-trainer:0.1.0",
            "submittedAt": "2026-11-01T10:00:00Z",
            "startedAt": "2026-11-01T10:00:05Z",
            "completedAt": "2026-11-01T12:00:05Z",
            "pythonVersion": "3.11.7",
            "torchVersion": "2.5.0",
            "device": "NVIDIA H100",
        },
        "progress": {"step": 100000, "totalSteps": 100000, "percent": 100.0},
    }


async def populate(ns: str, n: int) -> float:
    api = rest()
    template = {
        "apiVersion": "kexp.io/v1alpha1",
        "kind": "ExperimentTemplate",
        "metadata": {"name": "ppo-highway"},
        "spec": {
            "algorithm": "PPO",
            "environment": {"id": "highway-fast-v0", "numEnvs": 8},
            "hyperparameters": {"gamma": 0.8, "nSteps": 512, "batchSize": 64},
            "training": {"totalSteps": 100000},
        },
    }
    await retrying(
        api, "POST", f"/apis/kexp.io/v1alpha1/namespaces/{ns}/experimenttemplates", body=template
    )

    async def one(i: int) -> None:
        spec: dict[str, Any] = {
            "description": f"run {i}",
            "tags": ["bench", f"group-{i % 7}"],
            "hyperparameters": {"learningRate": 1e-4 * (1 + i % 5), "clipRange": 0.2},
            "training": {"totalSteps": 100000, "seed": i},
        }
        if i % 2:
            spec["templateRef"] = "ppo-highway"
        else:
            spec.update(algorithm="SAC", environment={"id": "highway-fast-v0"})
        body = {
            "apiVersion": "kexp.io/v1alpha1",
            "kind": "Experiment",
            "metadata": {"name": f"e-{i}"},
            "spec": spec,
        }
        path = EXP_PATH.format(ns=ns)
        await retrying(api, "POST", path, body=body)
        await retrying(
            api,
            "PATCH",
            f"{path}/e-{i}/status",
            body={"status": recorded_status(i)},
            content_type="application/merge-patch+json",
        )

    started = time.monotonic()
    await bounded(40, [one(i) for i in range(n)])
    await api.close()
    return time.monotonic() - started


def time_command(argv: list[str], repeat: int, env: dict[str, str]) -> dict[str, Any]:
    walls = []
    out = b""
    for _ in range(repeat):
        started = time.monotonic()
        proc = subprocess.run(argv, env=env, capture_output=True, check=False)
        walls.append(time.monotonic() - started)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.decode()[-500:]}")
        out = proc.stdout
    return {"median_s": statistics.median(walls), "max_s": max(walls), "bytes": len(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--cli-count", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--port-base", type=int, default=29700)
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    with bench_stack(args.state_dir, args.port_base) as stack:
        api = sync_api_client(stack.kubeconfig)
        apply_crds(api, load_crds(REPO / "crds"))
        suffix = str(int(time.time()))
        harvest_ns, cli_ns = f"bench-harvest-{suffix}", f"bench-cli-{suffix}"
        experiment_namespaces(api, stack, harvest_ns, cli_ns)
        env = {**os.environ, "KUBECONFIG": str(stack.kubeconfig), "NO_COLOR": "1"}
        os.environ["KUBECONFIG"] = str(stack.kubeconfig)
        with operator_process(stack, harvest_ns):
            harvest = asyncio.run(harvest_phase(stack, harvest_ns, args.count, args.timeout))

        populate_s = asyncio.run(populate(cli_ns, args.cli_count))
        kexp = str(Path(sys.executable).with_name("kexp"))
        out_csv = stack.state_dir / "master.csv"
        listing = time_command([kexp, "list", "-n", cli_ns], args.repeat, env)
        exporting = time_command(
            [kexp, "export", str(out_csv), "-n", cli_ns, "--force"], args.repeat, env
        )
        filtered = time_command(
            [kexp, "list", "-n", cli_ns, "--tag", "group-3", "--sort", "score"], args.repeat, env
        )
        rows = out_csv.read_text().count("\n") - 1
        columns = len(out_csv.read_text().splitlines()[0].split(","))
        api.close()

    print(f"harvest: {harvest['measured']} of {harvest['experiments']} experiments, 2-core machine")
    print(
        f"  Job Complete -> results in status: p50 {harvest['p50_s']:.2f} s, "
        f"p99 {harvest['p99_s']:.2f} s, max {harvest['max_s']:.2f} s "
        f"(goal p99 <= {GOALS['harvest_p99_s']:.0f} s)"
    )
    print(f"cli: {args.cli_count} experiments (populated in {populate_s:.0f} s), wall time")
    print(f"  {'kexp list':<40}{listing['median_s']:>6.2f} s (max {listing['max_s']:.2f})")
    print(
        f"  {'kexp export (' + str(rows) + ' rows, ' + str(columns) + ' cols)':<40}"
        f"{exporting['median_s']:>6.2f} s (max {exporting['max_s']:.2f})"
    )
    print(
        f"  {'kexp list --tag --sort score':<40}{filtered['median_s']:>6.2f} s "
        f"(max {filtered['max_s']:.2f})"
    )
    met = {
        "harvest_p99": harvest["p99_s"] <= GOALS["harvest_p99_s"],
        "list": listing["max_s"] <= GOALS["cli_s"],
        "export": exporting["max_s"] <= GOALS["cli_s"],
    }
    print(f"goals met: {json.dumps(met)}")
    print(
        json.dumps(
            {
                "harvest": harvest,
                "cli_count": args.cli_count,
                "list": listing,
                "export": exporting,
                "list_filtered": filtered,
                "export_rows": rows,
                "export_columns": columns,
                "goals_met": met,
            }
        )
    )


if __name__ == "__main__":
    main()
