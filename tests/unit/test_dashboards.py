"""The Grafana dashboards and Prometheus alert rules in dashboards/ are well formed and only
name metrics, labels and variables that exist.

Metric names are checked against the metrics kexp's code really registers (the trainer's
``TrainerMetrics`` with the contract's names, the operator's ``OperatorMetrics``), expanded the
way Prometheus exposes them (counters ``_total``, histograms ``_bucket``/``_sum``/``_count``).
Every PromQL expression goes through promtool's parser, and the alert rules through promtool's
rule unit tests with synthetic series. That the panels return data from a real run is
tests/integration/test_dashboards_live.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from kexp.api import contract
from kexp.dev import toolchain
from kexp.handlers.metrics import OperatorMetrics
from kexp_trainers.runtime.metrics import TrainerMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
RULES = DASHBOARDS / "kexp-alerts.rules.yaml"
EXPECTED = {"kexp-overview", "kexp-training", "kexp-sweeps"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

#: Grafana's own variables, which a dashboard uses without defining them.
GRAFANA_BUILTINS = frozenset(
    {
        "__rate_interval",
        "__interval",
        "__interval_ms",
        "__range",
        "__range_s",
        "__range_ms",
        "__from",
        "__to",
        "__dashboard",
        "__org",
        "__user",
        "timeFilter",
    }
)
#: Labels Prometheus adds to every scraped series (a kexp metric may be filtered by them).
TARGET_LABELS = frozenset({"job", "instance"})

_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"\b(kexp_[A-Za-z0-9_:]+)\s*(\{[^}]*\})?")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


# ---- what kexp's code defines ---------------------------------------------------------------
def _collectors(owner: object) -> Iterator[MetricWrapperBase]:
    for value in vars(owner).values():
        if isinstance(value, MetricWrapperBase):
            yield value


@cache
def defined_metrics() -> dict[str, frozenset[str]]:
    """Every sample name kexp exposes, with the labels it carries.

    Read from the registries the trainer and the operator really use, so a metric renamed in
    code fails here; ``_labelnames`` is prometheus_client's record of a metric's label names
    (the only place they are kept for a labelled metric with no children yet).
    """
    names: dict[str, frozenset[str]] = {}
    owners = [TrainerMetrics("exp", "ns", "trial"), OperatorMetrics()]
    for owner in owners:
        for collector in _collectors(owner):
            labels = frozenset(collector._labelnames)
            for family in collector.describe():
                base = family.name
                if family.type == "counter":
                    names[f"{base}_total"] = labels
                    names[f"{base}_created"] = labels
                elif family.type == "histogram":
                    names[f"{base}_bucket"] = labels | {"le"}
                    names[f"{base}_sum"] = labels
                    names[f"{base}_count"] = labels
                    names[f"{base}_created"] = labels
                else:
                    names[base] = labels
    return names


def test_the_trainer_metrics_are_the_contracts_names() -> None:
    exposed = set(defined_metrics())
    contract_names = {
        value
        for key, value in vars(contract).items()
        if key.startswith("METRIC_") and key != "METRIC_LABELS"
    }
    # The contract names families; a histogram is exposed as <name>_bucket, _sum and _count.
    missing = {n for n in contract_names if n not in exposed and f"{n}_bucket" not in exposed}
    assert not missing
    trainer = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in exposed}
    trainer = {n for n in trainer if n.startswith("kexp_trainer_")}
    assert trainer == {re.sub(r"_total$", "", n) for n in contract_names}


# ---- reading the dashboards -------------------------------------------------------------------
def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found += panel.get("panels", [])
    return found


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def used_variables(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in _VAR.finditer(text)}


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Grafana's variable interpolation (``$v``, ``${v}``, ``${v:fmt}``, ``[[v]]``)."""

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"no value for ${name}")
        return values[name]

    return _VAR.sub(one, text)


def sample_values(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """A plausible value for every variable: enough for PromQL to parse."""
    values = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
    for name, var in variables(dashboard).items():
        if var["type"] == "textbox":
            values[name] = str(var["query"])
        elif var["type"] == "custom":
            values[name] = str(var["options"][0]["value"])
        else:
            values[name] = "x"
    return values


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def dashboard_exprs(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target."""
    return [
        (p["title"], t["expr"])
        for p in panels(dashboard)
        for t in p.get("targets", [])
        if t.get("expr")
    ]


def variable_query(var: Mapping[str, Any]) -> str:
    """A query variable's query (a string, or Grafana 10's {query: ...} form)."""
    query = var["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def variable_queries(dashboard: Mapping[str, Any]) -> list[str]:
    return [variable_query(v) for v in variables(dashboard).values() if v["type"] == "query"]


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def metric_selectors(promql: str) -> list[tuple[str, set[str]]]:
    """``kexp_*`` metric names in an expression, with the label names each selector matches on.

    String literals are blanked first, so a label value such as "kexp-operator" or a regex with
    braces is never read as a name.
    """
    code = _STRING.sub('""', promql)
    return [
        (m.group(1), set(_MATCHER_LABEL.findall(m.group(2) or "")))
        for m in _SELECTOR.finditer(code)
    ]


DASHBOARD_FILES = load_dashboards()


# ---- structure --------------------------------------------------------------------------------
def test_the_three_dashboards_and_the_rules_exist() -> None:
    assert set(DASHBOARD_FILES) == EXPECTED
    assert RULES.is_file()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_structure(name: str) -> None:
    dash = DASHBOARD_FILES[name]
    assert dash["schemaVersion"] == 39
    assert dash["uid"] == name  # stable uids: links and provisioning refer to them
    assert dash["title"].startswith("kexp / ")
    assert dash["id"] is None  # an exported id would clash on import
    assert "kexp" in dash["tags"]
    assert dash["description"]
    ds = variables(dash)["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}: {ids}"
    for panel in panels(dash):
        where = f"{name}: panel {panel['id']} {panel.get('title')!r}"
        assert panel["datasource"] == DATASOURCE, where
        targets = [t for t in panel.get("targets", []) if t.get("expr", "").strip()]
        assert targets, f"{where} has no target with an expr"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where
        assert panel.get("title"), where
        assert panel.get("description"), f"{where}: say what the panel shows and where from"
        pos = panel["gridPos"]
        assert pos["x"] >= 0, where
        assert 0 < pos["w"] <= 24 - pos["x"], where
    for var in variables(dash).values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_variable_used_is_defined(name: str) -> None:
    dash = DASHBOARD_FILES[name]
    defined = set(variables(dash)) | GRAFANA_BUILTINS
    used: set[str] = set()
    for text in strings(dash):
        used |= used_variables(text)
    assert used - defined == set(), f"{name} uses undefined variables"
    # and nothing defined goes unused (a leftover variable still runs its query on every load)
    assert set(variables(dash)) - used == set(), f"{name} defines unused variables"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_hard_coded_instance_or_datasource(name: str) -> None:
    dash = DASHBOARD_FILES[name]
    for title, expr in dashboard_exprs(dash):
        labels = {label for _, ls in metric_selectors(expr) for label in ls}
        assert "instance" not in labels, title
        assert not re.search(r"\binstance\s*=", expr), title
        assert not re.search(r"\d+\.\d+\.\d+\.\d+", expr), title
    uids = {
        node["uid"] for node in _dicts(dash) if node.get("type") == "prometheus" and "uid" in node
    }
    assert uids == {"${datasource}"}


def _dicts(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _dicts(value)


def test_sweep_panels_only_read_trial_series() -> None:
    # Plain runs have no trial label; a sweep panel that forgot the matcher would show them.
    for title, expr in dashboard_exprs(DASHBOARD_FILES["kexp-sweeps"]):
        for name, _ in metric_selectors(expr):
            assert re.search(rf'{name}\{{[^}}]*trial!=""', expr), f"{title}: {expr}"
    assert "fill in when sweeps run" in DASHBOARD_FILES["kexp-sweeps"]["description"]


# ---- metric and label names ------------------------------------------------------------------
def _all_exprs() -> list[tuple[str, str]]:
    out = [(f"rules: {n}", e) for n, e in rule_exprs()]
    for name, dash in DASHBOARD_FILES.items():
        out += [(f"{name}: {t}", e) for t, e in dashboard_exprs(dash)]
        out += [(f"{name}: variable", q) for q in variable_queries(dash)]
    return out


@pytest.mark.parametrize(("where", "expr"), _all_exprs(), ids=lambda x: x[:60])
def test_every_kexp_metric_and_label_exists_in_the_code(where: str, expr: str) -> None:
    defined = defined_metrics()
    selectors = metric_selectors(expr)
    if "label_values" not in expr and "up{" not in expr:
        assert selectors, f"{where}: no kexp metric in {expr!r}"
    for name, labels in selectors:
        assert name in defined, f"{where}: {name} is not a metric kexp exposes"
        unknown = labels - defined[name] - TARGET_LABELS
        assert not unknown, f"{where}: {name} has no label(s) {sorted(unknown)}"


def test_every_kexp_metric_is_on_a_dashboard() -> None:
    used = {n for _, e in _all_exprs() for n, _ in metric_selectors(e)}
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in defined_metrics()}
    shown = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in used}
    assert families - shown == set()


def test_the_metric_name_check_catches_mistakes() -> None:
    # The parser must see names in every position a dashboard puts them, and nothing in strings.
    expr = (
        'sum by (le) (rate(kexp_trainer_checkpoint_upload_seconds_bucket{experiment=~"kexp_fake"}'
        '[5m])) / on() kexp_operator_experiments_stalled or up{job="kexp_operator_x"}'
    )
    assert metric_selectors(expr) == [
        ("kexp_trainer_checkpoint_upload_seconds_bucket", {"experiment"}),
        ("kexp_operator_experiments_stalled", set()),
    ]
    defined = defined_metrics()
    assert "kexp_trainer_steps_total" in defined
    assert "kexp_trainer_steps" not in defined  # the counter is only exposed with _total
    assert "kexp_operator_experiment_duration_seconds" not in defined  # histograms: _bucket ...
    assert defined["kexp_trainer_loss"] == {"experiment", "namespace", "trial", "loss"}
    assert defined["kexp_operator_reconcile_duration_seconds_bucket"] == {"le"}


# ---- promtool ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def promtool() -> Path:
    """promtool of the local stack's pinned Prometheus (Debian's package; installed if absent)."""
    try:
        return toolchain.ensure_tools(["promtool"]).path("promtool")
    except toolchain.ToolError as exc:
        pytest.skip(f"promtool unavailable: {exc}")


def _promtool(promtool: Path, *args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, check=False, cwd=cwd
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_promtool_accepts_the_alert_rules(promtool: Path) -> None:
    out = _promtool(promtool, "check", "rules", str(RULES))
    assert "SUCCESS: 4 rules found" in out
    alerts = {n for n, _ in rule_exprs()}
    assert alerts == {
        "KexpOperatorDown",
        "KexpExperimentStalled",
        "KexpHighFailureRate",
        "KexpOperatorApiErrors",
    }
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert rule["annotations"]["description"], rule["alert"]


def test_promtool_parses_every_dashboard_query(promtool: Path, tmp_path: Path) -> None:
    # promtool has no "check this expression": every query becomes a recording rule, which
    # `check rules` parses with Prometheus's own PromQL parser.
    rules = []
    for name, dash in DASHBOARD_FILES.items():
        values = sample_values(dash)
        for i, (title, expr) in enumerate(dashboard_exprs(dash)):
            record = f"dashboard_check:{name.replace('-', '_')}:{i}"
            rules.append({"record": record, "expr": substitute(expr, values)})
            assert "$" not in rules[-1]["expr"], (name, title)
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = _promtool(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in out


def _rules_without_annotations(tmp_path: Path) -> Path:
    """The rules as they are, minus annotations: promtool's unit tests compare annotations
    exactly, and their templates are already checked by ``check rules``; what is tested here
    is when each alert fires and with which labels."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _alerts(name: str, at: str, *labels: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": lb} for lb in labels]}


def _series(metric: str, values: str, **labels: str) -> dict[str, str]:
    """One input series of a promtool rule test (promtool's expanding notation)."""
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{body}}}", "values": values}


def _case(series: list[dict[str, str]], *checks: dict[str, Any]) -> dict[str, Any]:
    return {"interval": "1m", "input_series": series, "alert_rule_test": list(checks)}


FIN = "kexp_operator_experiments_finished_total"
STALLED = "kexp_operator_experiments_stalled"
ERRORS = "kexp_operator_api_errors_total"
OP = {"job": "kexp-operator", "instance": "10.0.0.7:8080"}
LAB = {"job": "lab-kexp-operator"}  # a ServiceMonitor's job: <release>-kexp-operator
OK_RUN = {"phase": "Succeeded", "reason": "JobComplete"}
OOM = {"phase": "Failed", "reason": "OOMKilled"}
RULE_TESTS: list[dict[str, Any]] = [
    # The target is scraped but down: fires after 5 minutes, naming the instance.
    _case(
        [_series("up", "1 1 0x12", **OP)],
        _alerts("KexpOperatorDown", "5m"),
        _alerts("KexpOperatorDown", "8m", {**OP, "severity": "critical"}),
    ),
    # No operator target at all (only another job is scraped): absent() fires.
    _case(
        [_series("up", "1x12", job="node", instance="n:9100")],
        _alerts("KexpOperatorDown", "4m"),
        _alerts("KexpOperatorDown", "6m", {"severity": "critical"}),
    ),
    # A healthy operator under a release-prefixed job raises nothing.
    _case(
        [
            _series("up", "1x30", **LAB, instance="a:8080"),
            _series(STALLED, "0x30", **LAB),
            _series(ERRORS, "3x30", **LAB, operation="get_job"),
            _series(FIN, "0+1x30", **LAB, **OK_RUN),
        ],
        *(
            _alerts(name, "20m")
            for name in (
                "KexpOperatorDown",
                "KexpExperimentStalled",
                "KexpOperatorApiErrors",
                "KexpHighFailureRate",
            )
        ),
    ),
    # Stalled experiments for 10 minutes.
    _case(
        [_series(STALLED, "0 0 2x20", **OP)],
        _alerts("KexpExperimentStalled", "11m"),
        _alerts("KexpExperimentStalled", "13m", {"job": "kexp-operator", "severity": "warning"}),
    ),
    # API errors that keep coming.
    _case(
        [_series(ERRORS, "0+2x30", **OP, operation="create_job")],
        _alerts("KexpOperatorApiErrors", "8m"),
        _alerts(
            "KexpOperatorApiErrors",
            "20m",
            {"job": "kexp-operator", "operation": "create_job", "severity": "warning"},
        ),
    ),
    # Half of the runs fail: fires once enough runs have finished.
    _case(
        [
            _series(FIN, "0+1x60", **OP, **OK_RUN),
            _series(FIN, "0+1x60", **OP, **OOM),
            _series(FIN, "0x60", job="small-kexp-operator", **OOM),
        ],
        _alerts("KexpHighFailureRate", "3m"),
        _alerts("KexpHighFailureRate", "30m", {"severity": "warning"}),
    ),
    # 1 failure in 3 runs: above 25%, but too few runs to judge.
    _case(
        [_series(FIN, "0 1 2x60", **OP, **OK_RUN), _series(FIN, "0 0 1x60", **OP, **OOM)],
        _alerts("KexpHighFailureRate", "30m"),
    ),
    # 10% failures: under the threshold.
    _case(
        [_series(FIN, "0+9x60", **OP, **OK_RUN), _series(FIN, "0+1x60", **OP, **OOM)],
        _alerts("KexpHighFailureRate", "30m"),
    ),
]


def test_alerts_fire_when_they_should_and_only_then(promtool: Path, tmp_path: Path) -> None:
    rules = _rules_without_annotations(tmp_path)
    tests = tmp_path / "alerts.test.yaml"
    tests.write_text(
        yaml.safe_dump(
            {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": RULE_TESTS}
        )
    )
    out = _promtool(promtool, "test", "rules", tests.name, cwd=tmp_path)
    assert "SUCCESS" in out
