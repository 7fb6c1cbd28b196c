"""Every dashboard panel's PromQL returns data from a real operator and a real training run.

The session's operator is scraped by the stack's Prometheus as job ``kexp-operator``; a PPO run
on CartPole is created with the CLI and trained by ``kexp dev run-trainer`` (the pod's own
command as a local process, whose metrics port the stack's Prometheus scrapes; the trainer
waits for one more scrape after its final evaluation, so the evaluation panels have data too).
Beside it: a run whose simulated pod succeeds at once, one whose simulated pod is OOMKilled (a
real Failed phase with a reason), and an Experiment in a namespace whose ResourceQuota allows
no Jobs (so the API server refuses the operator's Job creation: real API errors). Then each
panel's queries, with the template variables set to this run, go to Prometheus's query_range
API over the window of the test. The sweeps dashboard is checked the same way against a real
Ray Tune sweep.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from kubernetes import client

from kexp.cli.main import cli
from kexp.dev import cluster
from kexp.dev.podrunner import end_simulated_pods
from kexp.dev.prometheus import Prometheus
from kexp.dev.stack import Stack
from tests.conftest import OperatorProcess
from tests.integration.test_operator import Lab
from tests.integration.test_sweep import sweep_experiment
from tests.unit.test_dashboards import (
    RULES,
    dashboard_exprs,
    load_dashboards,
    substitute,
    variable_query,
    variables,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parents[2]
RUN = "dash"
#: Long enough for several scrapes (2 s) on a fast machine, short enough to end well within the
#: simulated pod's 45 s on a slow one (about 25 s on the 2-core development machine).
TOTAL_STEPS = 60000
#: Grafana computes $__rate_interval from the scrape interval (2 s here) and the step.
RATE_INTERVAL = "20s"
STEP_S = 2

#: The sweep of the sweeps dashboard's test: trials one after another, the second long enough
#: (about 35 s on a fast machine, longer on a slow one) for the first one's flat step counter
#: to fill a whole $__rate_interval: the `idle` state.
SWEEP = "dash-sweep"
SWEEP_TRIAL_STEPS = 250000


def _kexp(stack: Stack, namespace: str, *args: str) -> Result:
    base = ["--kubeconfig", str(stack.kubeconfig), "-n", namespace]
    argv = [args[0], *base, *args[1:]] if args[0] != "dev" else list(args)
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, f"kexp {' '.join(args)}: {result.output[-3000:]}"
    return result


def _get(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(
        "kexp.io", "v1alpha1", namespace, "experiments", name
    )
    return obj


def _wait_status(
    custom: client.CustomObjectsApi, namespace: str, name: str, key: str, value: Any = None
) -> dict[str, Any]:
    """The Experiment's status once ``status[key]`` is ``value`` (or set at all, for None)."""

    def ready() -> dict[str, Any] | None:
        status: dict[str, Any] = _get(custom, namespace, name).get("status") or {}
        found = status.get(key)
        return status if (found if value is None else found == value) else None

    return wait_until(ready, timeout_s=90, what=f"{name}'s status.{key} {value or 'set'}")


def _api(prom: Prometheus, path: str, params: dict[str, Any] | list[tuple[str, Any]]) -> Any:
    url = f"{prom.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]


def query_range(prom: Prometheus, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    data = _api(prom, "query_range", {"query": expr, "start": start, "end": end, "step": STEP_S})
    result: list[dict[str, Any]] = data["result"]
    return result


def finite_points(result: list[dict[str, Any]]) -> int:
    return sum(math.isfinite(float(v)) for series in result for _, v in series["values"])


def label_values(prom: Prometheus, query: str, start: float, end: float) -> set[str]:
    """What Grafana's ``label_values(selector, label)`` offers, from Prometheus's series API."""
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
    assert match, query
    selector, label = match.groups()
    data = _api(
        prom, f"label/{label}/values", [("match[]", selector), ("start", start), ("end", end)]
    )
    return set(data)


def _quota_namespace(stack: Stack, kube: Any, to_delete: list[str]) -> str:
    """A watched namespace whose ResourceQuota allows no Jobs: the API refuses the operator."""
    name = f"t-dash-quota-{secrets.token_hex(3)}"
    cluster.ensure_namespace(kube, name)
    to_delete.append(name)
    cluster.apply_s3_secret(kube, name, stack.s3_credentials())
    client.CoreV1Api(kube).create_namespaced_resource_quota(
        name,
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-jobs"},
            "spec": {"hard": {"count/jobs.batch": "0"}},
        },
    )
    return name


def test_every_panel_returns_data_from_a_real_run(
    stack: Stack,
    kube: Any,
    prom: Prometheus,
    operator: OperatorProcess,
    namespace: str,
    namespaces_to_delete: list[str],
) -> None:
    start = time.time() - 5
    prom.add_target("kexp-operator", f"127.0.0.1:{operator.metrics_port}")
    custom = client.CustomObjectsApi(kube)
    try:
        prom.wait_for('up{job="kexp-operator"} == 1', timeout_s=30)
        quota_ns = _quota_namespace(stack, kube, namespaces_to_delete)
        _kexp(
            stack, quota_ns, "new", "blocked", "--no-source", "--set", "algorithm=PPO",
            "--set", "environment.id=CartPole-v1", "--set", "training.totalSteps=100", "--apply",
        )  # fmt: skip
        # A run that succeeds at once (kwok), so that the Succeeded counter already exists when
        # the trained run ends: a counter's first value is invisible to increase() and rate().
        _kexp(
            stack, namespace, "new", "quick", "--no-source", "--set", "algorithm=PPO",
            "--set", "environment.id=CartPole-v1", "--set", "training.totalSteps=100", "--apply",
        )  # fmt: skip
        _kexp(
            stack, namespace, "new", "oom", "--no-source", "--set", "algorithm=PPO",
            "--set", "environment.id=CartPole-v1", "--set", "training.totalSteps=100",
            "--annotation", "sim.kexp.io/exit-code=137",
            "--annotation", "sim.kexp.io/reason=OOMKilled", "--apply",
        )  # fmt: skip
        _kexp(
            stack, namespace, "submit", str(REPO / "examples/templates/cartpole-smoke.yaml"),
            "--no-source",
        )  # fmt: skip
        _kexp(
            stack, namespace, "new", RUN, "--no-source", "-t", "cartpole-smoke",
            "--annotation", "sim.kexp.io/run-for=45s",
            "--set", f"training.totalSteps={TOTAL_STEPS}",
            "--set", "training.checkpointEvery=15000", "--apply",
        )  # fmt: skip
        _wait_status(custom, namespace, RUN, "phase", "Running")
        _wait_status(custom, namespace, "quick", "phase", "Succeeded")
        trained = _kexp(
            stack, namespace, "dev", "run-trainer", "--state-dir", str(stack.state_dir),
            "-n", namespace, RUN,
        )  # fmt: skip
        reached = re.search(r"trained to step (\d+)", trained.output)
        assert reached, trained.output[-3000:]
        # PPO trains whole rollouts (numEnvs x nSteps), so it may stop a little short.
        assert int(reached.group(1)) > TOTAL_STEPS * 0.9
        status = _wait_status(custom, namespace, RUN, "results")
        assert status["phase"] == "Succeeded", status
        oom = _wait_status(custom, namespace, "oom", "phase", "Failed")
        assert oom["reason"] == "OOMKilled", oom
        # What the operator did must have been scraped before the queries run.
        fin = 'kexp_operator_experiments_finished_total{job="kexp-operator"'
        op = 'job="kexp-operator"'
        for promql in (
            f'{fin}, phase="Failed", reason="OOMKilled"}}',
            f'increase({fin}, phase="Succeeded"}}[10m]) > 0',
            f'increase(kexp_operator_api_errors_total{{{op}, operation="create_job"}}[2m]) > 0',
        ):
            prom.wait_for(promql, timeout_s=90)
        # A few more scrapes, so that the final counts fall on several steps of the range.
        time.sleep(3 * STEP_S)
        end = time.time()

        values = {
            "kexp-overview": {"job": "kexp-operator"},
            "kexp-training": {
                "namespace": namespace,
                "experiment": RUN,
                "total_steps": str(TOTAL_STEPS),
            },
            "kexp-sweeps": {
                "namespace": namespace,
                "experiment": RUN,
                "metric": "reward",
                "objective": "max",
            },
        }
        builtins = {"__rate_interval": RATE_INTERVAL, "__range": f"{math.ceil(end - start)}s"}
        failures: list[str] = []
        report: list[str] = []
        for name, dash in load_dashboards().items():
            subst = {**builtins, **values[name]}
            assert set(values[name]) == set(variables(dash)) - {"datasource"}, name
            for title, expr in dashboard_exprs(dash):
                promql = substitute(expr, subst)
                result = query_range(prom, promql, start, end)
                points = finite_points(result)
                report.append(f"{name} / {title}: {len(result)} series, {points} finite points")
                if name == "kexp-sweeps":
                    # Every sweeps panel reads only series with a trial label: a plain run has
                    # none, so each must be empty here (see the sweep's own test below).
                    if result:
                        failures.append(f"{name} / {title} should be empty here: {promql}")
                elif not points:
                    failures.append(f"{name} / {title} returned no data: {promql} -> {result}")
        print("\n".join(report))
        assert not failures, "\n".join(failures)

        # The variables' own queries offer this run (and the sweep dashboard's do not).
        offered = {
            (name, var["name"]): label_values(
                prom, substitute(variable_query(var), {**builtins, **values[name]}), start, end
            )
            for name, dash in load_dashboards().items()
            for var in variables(dash).values()
            if var["type"] == "query"
        }
        assert "kexp-operator" in offered[("kexp-overview", "job")]
        assert namespace in offered[("kexp-training", "namespace")]
        assert RUN in offered[("kexp-training", "experiment")]
        assert namespace not in offered[("kexp-sweeps", "namespace")]

        # The alert expressions run on real data: API errors fire (the quota), the rest hold.
        rules = {
            r["alert"]: r["expr"]
            for g in yaml.safe_load(RULES.read_text())["groups"]
            for r in g["rules"]
        }
        errors = prom.query(rules["KexpOperatorApiErrors"])
        assert {e["metric"]["operation"] for e in errors} >= {"create_job"}
        assert prom.query(rules["KexpOperatorDown"]) == []
        assert prom.query(rules["KexpExperimentStalled"]) == []
        prom.query(rules["KexpHighFailureRate"])  # evaluates; too few runs here to fire
    finally:
        prom.remove_target("kexp-operator")


def test_every_sweep_panel_returns_data_from_a_real_sweep(
    stack: Stack, kube: Any, prom: Prometheus, operator: OperatorProcess, namespace: str
) -> None:
    start = time.time() - 5
    lab = Lab(kube, namespace)
    lab.create(
        sweep_experiment(
            SWEEP,
            {
                "numSamples": 2,
                "maxConcurrentTrials": 1,
                "parameters": {"learningRate": {"choice": [3.0e-4, 1.0e-3]}},
            },
            training={"totalSteps": SWEEP_TRIAL_STEPS, "seed": 1},
        )
    )
    lab.wait_phase(SWEEP, "Running")
    try:
        ran = _kexp(
            stack, namespace, "dev", "run-trainer", "--state-dir", str(stack.state_dir),
            "-n", namespace, SWEEP,
        )  # fmt: skip
    finally:
        end_simulated_pods(kube, namespace, f"{SWEEP}-sweep", 0)
    assert "sweep done: 2 trials" in ran.output, ran.output[-3000:]
    done = lab.wait_phase(SWEEP, "Succeeded", timeout_s=60)
    assert done["sweep"]["completed"] == 2, done["sweep"]
    # Both trials' final scores were scraped before the sweep's process exited (and its
    # target went away, which makes its series stale: hence last_over_time).
    scores = prom.query(
        f'count(last_over_time(kexp_trainer_eval_score{{namespace="{namespace}", '
        f'experiment="{SWEEP}", metric="reward", trial!=""}}[10m]))'
    )
    assert scores, "the trials' evaluation scores were never scraped"
    assert float(scores[0]["value"][1]) == 2
    end = time.time()

    values = {"namespace": namespace, "experiment": SWEEP, "metric": "reward", "objective": "max"}
    builtins = {"__rate_interval": RATE_INTERVAL, "__range": f"{math.ceil(end - start)}s"}
    dash = load_dashboards()["kexp-sweeps"]
    assert set(values) == set(variables(dash)) - {"datasource"}
    failures = []
    for title, expr in dashboard_exprs(dash):
        promql = substitute(expr, {**builtins, **values})
        result = query_range(prom, promql, start, end)
        print(f"kexp-sweeps / {title}: {len(result)} series, {finite_points(result)} points")
        if not finite_points(result):
            failures.append(f"{title} returned no data: {promql} -> {result}")
    assert not failures, "\n".join(failures)
    # The best score over the trials is the best trial's, as the status says.
    best_expr = substitute(dict(dashboard_exprs(dash))["Best score"], values)
    best = query_range(prom, best_expr, start, end)
    assert float(best[0]["values"][-1][1]) == pytest.approx(done["sweep"]["bestTrial"]["score"])
    offered = {
        var["name"]: label_values(
            prom, substitute(variable_query(var), {**builtins, **values}), start, end
        )
        for var in variables(dash).values()
        if var["type"] == "query"
    }
    assert namespace in offered["namespace"]
    assert SWEEP in offered["experiment"]
    assert "reward" in offered["metric"]
