"""How long `kexp dev up` takes to a ready API server, once the tools are cached.

Goal (foundation issue): API server ready in at most 30 s on the 2-core machine.

Runs ``--runs`` times each of: a *fresh* start (new state dir: certificates, an empty etcd,
cluster bootstrap) and a *restart* (same state dir after ``down``), and prints the API-ready
and all-services-ready times side by side, then one JSON line.

    .venv/bin/python -m bench.stack_startup --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from kexp.dev import toolchain
from kexp.dev.stack import Stack

GOAL_S = 30.0


def _measure(state: Path, port_base: int) -> tuple[float, float]:
    report = Stack(state).up(port_base=port_base, log=lambda _m: None)
    return report.api_ready_s, report.total_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--port-base", type=int, default=29400)
    args = parser.parse_args()

    started = time.monotonic()
    toolchain.ensure_tools()
    tools_s = time.monotonic() - started

    results: dict[str, dict[str, list[float]]] = {
        "fresh": {"api": [], "all": []},
        "restart": {"api": [], "all": []},
    }
    with tempfile.TemporaryDirectory(prefix="kexp-bench-") as tmp:
        for i in range(args.runs):
            state = Path(tmp) / f"run{i}"
            api, total = _measure(state, args.port_base)
            results["fresh"]["api"].append(api)
            results["fresh"]["all"].append(total)
            Stack(state).down()
            api, total = _measure(state, args.port_base)
            results["restart"]["api"].append(api)
            results["restart"]["all"].append(total)
            Stack(state).down(purge=True)

    print(f"tools check (cached): {tools_s:.2f}s; {args.runs} runs each")
    print(f"goal: API server ready in <= {GOAL_S:.0f}s")
    headers = ("API ready p50", "API ready max", "all ready p50", "all ready max")
    print(f"{'start':<10}" + "".join(f"{h:>15}" for h in headers))
    summary: dict[str, dict[str, float]] = {}
    for kind, series in results.items():
        row = {
            "api_p50_s": statistics.median(series["api"]),
            "api_max_s": max(series["api"]),
            "all_p50_s": statistics.median(series["all"]),
            "all_max_s": max(series["all"]),
        }
        summary[kind] = row
        print(f"{kind:<10}" + "".join(f"{v:>14.2f}s" for v in row.values()))
    worst = max(r["api_max_s"] for r in summary.values())
    verdict = "MET" if worst <= GOAL_S else "MISSED"
    print(f"goal {verdict}: worst API-ready time {worst:.2f}s vs {GOAL_S:.0f}s")
    print(
        json.dumps(
            {
                "bench": "stack_startup",
                "runs": args.runs,
                "tools_check_s": tools_s,
                "goal_s": GOAL_S,
                "goal_met": worst <= GOAL_S,
                **summary,
            }
        )
    )


if __name__ == "__main__":
    main()
