"""What an Experiment status write costs the API server, and how much of it the CEL rules are.

A status write (merge patch on ``/status``) makes the API server decode the whole Experiment,
check it against the CRD's schema and CEL rules (the spec's included), track its managed fields
and store it. Each Experiment gets three in its life, so their cost bounds the operator's rate
(see ``bench/operator_throughput.py`` and docs/operator.md).

For each variant of the Experiment CRD, in alternating rounds on one stack: N Experiments are
created in a fresh namespace, then one status write each with ``--concurrency`` in flight.

- ``generated``: the CRD as ``kexp.api.crd`` writes it;
- ``without-cel``: every ``x-kubernetes-validations`` rule removed (not shippable: the spec's
  immutability and cross-field checks are CEL);
- ``one-rule``: the 14 presence rules and the per-field ``self == oldSelf`` rules folded into
  one spec-level rule (a message expression lists the changed fields).

The generated CRD is put back at the end.

    .venv/bin/python -m bench.status_write_cost --count 1000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import time
from pathlib import Path
from typing import Any

from bench.operator_throughput import create_all, experiment_body, rest, write_statuses
from bench.stacks import bench_stack, experiment_namespaces
from kexp.kube.client import sync_api_client
from kexp.kube.crds import apply_crds, load_crds

REPO = Path(__file__).resolve().parent.parent
RULES = "x-kubernetes-validations"


def _spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]
    return spec


def _without_cel(node: Any) -> None:
    if isinstance(node, dict):
        node.pop(RULES, None)
        for value in node.values():
            _without_cel(value)
    elif isinstance(node, list):
        for value in node:
            _without_cel(value)


def _one_rule(crd: dict[str, Any]) -> None:
    spec = _spec_schema(crd)
    immutable = []
    for name, prop in spec["properties"].items():
        rules = prop.get(RULES) or []
        if any(r["rule"] == "self == oldSelf" for r in rules):
            immutable.append(name)
            kept = [r for r in rules if r["rule"] != "self == oldSelf"]
            if kept:
                prop[RULES] = kept
            else:
                prop.pop(RULES)
    spec[RULES] = [r for r in spec[RULES] if "oldSelf" not in r["rule"]]
    same = [
        f"(has(self.{n}) ? has(oldSelf.{n}) && self.{n} == oldSelf.{n} : !has(oldSelf.{n}))"
        for n in immutable
    ]
    changed = " + ".join(f"({s} ? '' : ' spec.{n}')" for s, n in zip(same, immutable, strict=True))
    spec[RULES].append(
        {
            "rule": " && ".join(same),
            "messageExpression": f"'immutable once submitted; changed:' + {changed}",
        }
    )


def variant(crds: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The CRDs with the Experiment CRD changed as ``name`` says."""
    out = copy.deepcopy(crds)
    for crd in out:
        if crd["spec"]["names"]["kind"] != "Experiment":
            continue
        if name == "without-cel":
            _without_cel(crd)
        elif name == "one-rule":
            _one_rule(crd)
    return out


async def status_write_seconds(namespace: str, n: int, concurrency: int) -> float:
    """Seconds for one status write to each of n new Experiments (created first, untimed)."""
    api = rest()
    path = f"/apis/kexp.io/v1alpha1/namespaces/{namespace}/experiments"
    await create_all(api, concurrency, path, [experiment_body(i) for i in range(n)])
    elapsed = await write_statuses(api, concurrency, path, n)
    await api.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port-base", type=int, default=29700)
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args()
    generated = load_crds(REPO / "crds")
    names = ("generated", "without-cel", "one-rule")
    results: dict[str, list[float]] = {name: [] for name in names}
    with bench_stack(args.state_dir, args.port_base) as stack:
        api = sync_api_client(stack.kubeconfig)
        os.environ["KUBECONFIG"] = str(stack.kubeconfig)
        try:
            for round_ in range(args.rounds):
                for name in names:
                    apply_crds(api, variant(generated, name))
                    time.sleep(2)  # the new schema reaches every request handler
                    ns = f"bench-status-{name}-{round_}-{int(time.time())}"
                    experiment_namespaces(api, stack, ns)
                    seconds = asyncio.run(status_write_seconds(ns, args.count, args.concurrency))
                    results[name].append(1000 * seconds / args.count)
                    print(f"round {round_ + 1} {name:<12} {results[name][-1]:.2f} ms a write")
        finally:
            apply_crds(api, generated)
            api.close()
    print(f"{args.count} status writes per variant and round, {args.concurrency} in flight")
    for name, costs in results.items():
        print(f"  {name:<12} {min(costs):.2f}-{max(costs):.2f} ms a status write")


if __name__ == "__main__":
    main()
