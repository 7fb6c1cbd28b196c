"""The Helm chart: lint, the objects it renders, its values schema, and its copies' drift.

Rendering is `helm template` of the real chart with the project's pinned helm; the objects are
compared whole where they are the contract (RBAC rules, security contexts), so a change to
what the operator may do is a deliberate edit of this file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kexp.api import chart_sync, contract
from kexp.dev import toolchain

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kexp"
RELEASE_NS = "kexp-system"
#: helm built from source (without the release's ldflags) assumes Kubernetes v1.20 when it has
#: no cluster to ask, which the chart's kubeVersion (>=1.29) refuses; the local stack's version.
KUBE_VERSION = "1.34.2"
MONITORING = ("--api-versions", "monitoring.coreos.com/v1")

#: What the operator may do in a namespace it watches: the chart's contract with the code
#: (kexp/kube/aio.py and kopf's watches). README: RBAC says why each is needed.
NAMESPACED_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["kexp.io"],
        "resources": ["experiments"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": ["kexp.io"], "resources": ["experiments/status"], "verbs": ["patch"]},
    {"apiGroups": ["kexp.io"], "resources": ["experiments/finalizers"], "verbs": ["update"]},
    {"apiGroups": ["kexp.io"], "resources": ["experimenttemplates"], "verbs": ["list", "watch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {
        "apiGroups": ["ray.io"],
        "resources": ["rayjobs"],
        "verbs": ["create", "get", "list", "watch"],
    },
]
CRD_DISCOVERY_RULES = [
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["list", "watch"],
    }
]
#: kopf's namespace observer, when it watches named namespaces.
NAMESPACE_DISCOVERY_RULES = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}
]
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    try:
        return toolchain.ensure_tools(["helm"]).path("helm")
    except toolchain.ToolError as exc:
        pytest.skip(f"helm is not available: {exc}")


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # Keep helm's cache and config out of the developer's home.
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


class Helm:
    def __init__(self, binary: Path, env: dict[str, str]) -> None:
        self.binary = binary
        self.env = env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, check=False
        )

    def template_args(self, chart: Path, *args: str) -> list[str]:
        return [
            "template",
            "kexp",
            str(chart),
            "--namespace",
            RELEASE_NS,
            "--kube-version",
            KUBE_VERSION,
            *args,
        ]

    def render(self, *args: str, chart: Path = CHART) -> list[dict[str, Any]]:
        proc = self.run(*self.template_args(chart, *args))
        assert proc.returncode == 0, proc.stderr
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]

    def refuse(self, *args: str, chart: Path = CHART) -> str:
        """The error of a render that must fail."""
        proc = self.run(*self.template_args(chart, *args))
        assert proc.returncode != 0, f"rendered although it should not: {args}"
        return proc.stderr


@pytest.fixture(scope="module")
def helm(helm_bin: Path, helm_env: dict[str, str]) -> Helm:
    return Helm(helm_bin, helm_env)


@pytest.fixture(scope="module")
def default(helm: Helm) -> list[dict[str, Any]]:
    return helm.render()


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (ctr,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return ctr


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(docs)["env"]}


# ---- lint and metadata --------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--set", "watchNamespaces={research,team-av}"],
        ["--set", "monitoring.assumePrometheusOperator=true"],
    ],
    ids=["default", "namespaced", "monitoring"],
)
def test_helm_lint_strict_passes(helm: Helm, args: list[str]) -> None:
    proc = helm.run("lint", "--strict", str(CHART), *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"]) == ("v2", "kexp")
    assert (chart["version"], chart["appVersion"]) == ("0.1.0", "0.1.0")


# ---- the chart's copies -------------------------------------------------------------------
def test_chart_crds_are_the_generated_crds() -> None:
    # If this fails, run `make chart-sync` (or `python -m kexp.api.chart_sync`).
    repo_crds = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart_crds = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert repo_crds
    assert chart_crds == repo_crds


def test_chart_files_are_the_dashboards_and_rules() -> None:
    # Whatever dashboards/ holds, the chart must hold the same, byte for byte.
    sources = {p.name: p.read_bytes() for p in (REPO / "dashboards").glob("*.json")}
    copies = {p.name: p.read_bytes() for p in (CHART / "files" / "dashboards").glob("*.json")}
    assert copies == sources
    rules = REPO / "dashboards" / chart_sync.RULES_FILE
    copy = CHART / "files" / chart_sync.RULES_FILE
    assert copy.exists() == rules.exists()
    if rules.exists():
        assert copy.read_bytes() == rules.read_bytes()


def test_chart_sync_check_passes() -> None:
    assert chart_sync.check(REPO) == []


def test_chart_sync_copies_removes_and_reports(tmp_path: Path) -> None:
    (tmp_path / "dashboards").mkdir()
    (tmp_path / "dashboards" / "a.json").write_text('{"title": "a"}\n')
    (tmp_path / "dashboards" / chart_sync.RULES_FILE).write_text("groups: []\n")
    stale = tmp_path / "helm/kexp/files/dashboards/gone.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    assert chart_sync.main(["--check", "--root", str(tmp_path)]) == 1
    assert chart_sync.main(["--root", str(tmp_path)]) == 0
    assert not stale.exists()
    assert (tmp_path / "helm/kexp/files/dashboards/a.json").read_text() == '{"title": "a"}\n'
    assert (tmp_path / "helm/kexp/crds").is_dir()
    assert sorted(p.name for p in (tmp_path / "crds").iterdir()) == sorted(
        p.name for p in (tmp_path / "helm/kexp/crds").iterdir()
    )
    assert chart_sync.check(tmp_path) == []
    (tmp_path / "dashboards" / "a.json").write_text('{"title": "b"}\n')
    problems = chart_sync.check(tmp_path)
    assert len(problems) == 1
    assert '"title": "b"' in problems[0]
    (tmp_path / "dashboards" / chart_sync.RULES_FILE).unlink()
    assert any("no source" in p for p in chart_sync.check(tmp_path))


# ---- the default render: every namespace, ClusterRole --------------------------------------
def test_default_render_objects(default: list[dict[str, Any]]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in default if d["kind"] != "ConfigMap")
    assert kinds == [
        ("ClusterRole", "kexp"),
        ("ClusterRole", "kexp-discovery"),
        ("ClusterRoleBinding", "kexp"),
        ("ClusterRoleBinding", "kexp-discovery"),
        ("Deployment", "kexp"),
        ("Service", "kexp-metrics"),
        ("ServiceAccount", "kexp"),
    ]
    for doc in default:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == RELEASE_NS, doc["kind"]


def test_cluster_wide_rbac(default: list[dict[str, Any]]) -> None:
    assert one(default, "ClusterRole", "kexp")["rules"] == NAMESPACED_RULES
    assert one(default, "ClusterRole", "kexp-discovery")["rules"] == CRD_DISCOVERY_RULES
    subject = [{"kind": "ServiceAccount", "name": "kexp", "namespace": RELEASE_NS}]
    for name in ("kexp", "kexp-discovery"):
        binding = one(default, "ClusterRoleBinding", name)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": name,
        }
        assert binding["subjects"] == subject
    assert container(default)["args"][0] == "--all-namespaces"


def test_deployment(default: list[dict[str, Any]]) -> None:
    deployment = one(default, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "kexp"
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    ctr = container(default)
    assert ctr["image"] == "ghcr.io/kexp-io/kexp-operator:0.1.0"
    assert ctr["command"] == ["kexp-operator"]
    assert ctr["args"] == ["--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"]
    assert ctr["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert ctr["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "healthz"},
        "initialDelaySeconds": 15,
        "periodSeconds": 20,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    assert {p["name"]: p["containerPort"] for p in ctr["ports"]} == {
        "healthz": 8081,
        "metrics": 8080,
    }
    assert ctr["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    # A read-only root still needs a scratch /tmp.
    assert ctr["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert env_of(default) == {
        "KEXP_TRAINER_IMAGE": "ghcr.io/kexp-io/kexp-trainer:0.1.0",
        "KEXP_IMAGE_PULL_POLICY": "IfNotPresent",
        "KEXP_OPERATOR_METRICS_PORT": "8080",
        "KEXP_PROGRESS_INTERVAL_S": "10",
        "KEXP_STALL_SECONDS": "600",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    # The Service and the monitors find the pod by the selector labels.
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    assert one(default, "Service")["spec"]["selector"] == selector


def test_values_reach_the_deployment(helm: Helm) -> None:
    docs = helm.render(
        "--set", "image.repository=registry.lab/kexp-operator",
        "--set", "image.tag=dev",
        "--set", "image.pullPolicy=Always",
        "--set", "imagePullSecrets[0].name=regcred",
        "--set", "trainer.image.repository=registry.lab/trainer",
        "--set", "trainer.image.digest=sha256:" + "a" * 64,
        "--set", "trainer.image.pullPolicy=Always",
        "--set", "operator.verbose=true",
        "--set", "operator.stallSeconds=120",
        "--set", "operator.extraEnv[0].name=HTTPS_PROXY",
        "--set", "operator.extraEnv[0].value=http://proxy:3128",
        "--set", "metrics.port=9100",
        "--set", "nodeSelector.pool=system",
        "--set", "tolerations[0].key=dedicated",
        "--set", "tolerations[0].operator=Exists",
        "--set", "priorityClassName=system-cluster-critical",
    )  # fmt: skip
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    ctr = container(docs)
    assert ctr["image"] == "registry.lab/kexp-operator:dev"
    assert ctr["imagePullPolicy"] == "Always"
    assert ctr["args"][-1] == "--verbose"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    env = env_of(docs)
    assert env["KEXP_TRAINER_IMAGE"] == "registry.lab/trainer@sha256:" + "a" * 64
    assert env["KEXP_IMAGE_PULL_POLICY"] == "Always"
    assert env["KEXP_STALL_SECONDS"] == "120"
    assert env["KEXP_OPERATOR_METRICS_PORT"] == "9100"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert one(docs, "Service")["spec"]["ports"][0]["port"] == 9100


def test_metrics_off(helm: Helm) -> None:
    docs = helm.render("--set", "metrics.enabled=false", *MONITORING)
    assert env_of(docs)["KEXP_OPERATOR_METRICS_PORT"] == "0"
    assert [p["name"] for p in container(docs)["ports"]] == ["healthz"]
    assert not by_kind(docs, "Service")
    assert not by_kind(docs, "ServiceMonitor")
    assert not by_kind(docs, "PodMonitor")


def test_replicas_zero_stops_the_operator(helm: Helm) -> None:
    docs = helm.render("--set", "replicaCount=0")
    assert one(docs, "Deployment")["spec"]["replicas"] == 0


# ---- watchNamespaces: Roles ------------------------------------------------------------------
def test_watch_namespaces_renders_roles_and_no_cluster_wide_access(helm: Helm) -> None:
    docs = helm.render("--set", "watchNamespaces={a,b}")
    roles = {r["metadata"]["namespace"]: r for r in by_kind(docs, "Role")}
    assert sorted(roles) == ["a", "b"]
    for ns, role in roles.items():
        assert role["metadata"]["name"] == "kexp"
        assert role["rules"] == NAMESPACED_RULES, ns
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(docs, "RoleBinding")}
    assert sorted(bindings) == ["a", "b"]
    for binding in bindings.values():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "kexp",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kexp", "namespace": RELEASE_NS}
        ]
    # The only cluster-wide grant left is kopf's read of CRDs and namespaces: nothing
    # namespaced.
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert cluster_role["rules"] == CRD_DISCOVERY_RULES + NAMESPACE_DISCOVERY_RULES
    for rule in cluster_role["rules"]:
        assert set(rule["resources"]) <= CLUSTER_SCOPED
    assert [b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")] == ["kexp-discovery"]
    assert container(docs)["args"] == [
        "--namespace=a",
        "--namespace=b",
        "--liveness=http://0.0.0.0:8081/healthz",
    ]


def test_secrets_are_never_listed_or_watched(helm: Helm) -> None:
    for args in ([], ["--set", "watchNamespaces={a}"]):
        docs = helm.render(*args)
        for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
            for rule in role["rules"]:
                if "secrets" in rule["resources"] or "*" in rule["resources"]:
                    assert rule["verbs"] == ["get"]
                assert "*" not in rule["verbs"]
                assert "*" not in rule["apiGroups"]


def test_secret_names_narrow_the_get(helm: Helm) -> None:
    docs = helm.render("--set", "rbac.secretNames={kexp-s3,team-s3}")
    (rule,) = [r for r in one(docs, "ClusterRole", "kexp")["rules"] if "secrets" in r["resources"]]
    assert rule == {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get"],
        "resourceNames": ["kexp-s3", "team-s3"],
    }


def test_rbac_and_service_account_can_be_brought(helm: Helm) -> None:
    docs = helm.render(
        "--set", "rbac.create=false",
        "--set", "serviceAccount.create=false",
        "--set", "serviceAccount.name=platform-kexp",
    )  # fmt: skip
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    assert "ServiceAccount" not in kinds
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == (
        "platform-kexp"
    )
    error = helm.refuse("--set", "serviceAccount.create=false")
    assert "serviceAccount.name is required" in error


# ---- the S3 Secret --------------------------------------------------------------------------
S3_VALUES = [
    "--set", "s3.createSecret=true",
    "--set", "s3.endpoint=http://minio.minio:9000",
    "--set", "s3.accessKeyId=AKIA",
    "--set", "s3.secretAccessKey=shh",
]  # fmt: skip


def test_no_secret_by_default(default: list[dict[str, Any]]) -> None:
    assert not by_kind(default, "Secret")


def test_s3_secret_from_values_goes_to_the_watched_namespaces(helm: Helm) -> None:
    docs = helm.render(*S3_VALUES, "--set", "watchNamespaces={a,b}")
    secrets = {s["metadata"]["namespace"]: s for s in by_kind(docs, "Secret")}
    assert sorted(secrets) == ["a", "b"]
    for secret in secrets.values():
        assert secret["metadata"]["name"] == contract.DEFAULT_S3_SECRET
        assert secret["stringData"] == {
            contract.S3_ACCESS_KEY: "AKIA",
            contract.S3_SECRET_KEY: "shh",
            contract.S3_ENDPOINT_KEY: "http://minio.minio:9000",
            contract.S3_REGION_KEY: "us-east-1",
        }
        assert set(secret["stringData"]) == set(contract.S3_SECRET_KEYS)
    docs = helm.render(*S3_VALUES, "--set", "s3.secretNamespaces={lab}")
    assert [s["metadata"]["namespace"] for s in by_kind(docs, "Secret")] == ["lab"]
    docs = helm.render(*S3_VALUES)
    assert [s["metadata"]["namespace"] for s in by_kind(docs, "Secret")] == [RELEASE_NS]


def test_s3_secret_needs_its_keys(helm: Helm) -> None:
    error = helm.refuse("--set", "s3.createSecret=true", "--set", "s3.endpoint=http://m:9000")
    assert "s3.accessKeyId is required" in error


# ---- monitoring -----------------------------------------------------------------------------
def test_no_monitoring_objects_without_the_prometheus_operator(
    default: list[dict[str, Any]],
) -> None:
    assert not [d for d in default if d["apiVersion"].startswith("monitoring.coreos.com/")]


def rules_file() -> dict[str, Any] | None:
    path = CHART / "files" / chart_sync.RULES_FILE
    return yaml.safe_load(path.read_text()) if path.exists() else None


@pytest.mark.parametrize(
    "args",
    [list(MONITORING), ["--set", "monitoring.assumePrometheusOperator=true"]],
    ids=["api-available", "forced"],
)
def test_monitoring_objects_with_the_api(helm: Helm, args: list[str]) -> None:
    docs = helm.render(*args)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["selector"]["matchLabels"] == selector
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NS]}
    assert not by_kind(docs, "PodMonitor")
    rules = rules_file()
    if rules is None:
        assert not by_kind(docs, "PrometheusRule")
    else:
        assert one(docs, "PrometheusRule")["spec"] == {"groups": rules["groups"]}


def test_monitoring_options(helm: Helm) -> None:
    docs = helm.render(
        *MONITORING,
        "--set", "serviceMonitor.enabled=false",
        "--set", "podMonitor.enabled=true",
        "--set", "podMonitor.scrapeTimeout=10s",
        "--set", "podMonitor.labels.release=prom",
        "--set", "prometheusRule.enabled=false",
    )  # fmt: skip
    assert not by_kind(docs, "ServiceMonitor")
    assert not by_kind(docs, "PrometheusRule")
    pod_monitor = one(docs, "PodMonitor")
    assert pod_monitor["metadata"]["labels"]["release"] == "prom"
    assert pod_monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    error = helm.refuse(*MONITORING, "--set", "podMonitor.enabled=true")
    assert "choose one" in error


def test_scrape_job_matches_what_alerts_and_dashboards_select(helm: Helm) -> None:
    # The alert rules select job=~"...": both monitors must produce a matching job name,
    # whatever the release is called. (The dashboards offer the jobs that exist.)
    rules = CHART / "files" / chart_sync.RULES_FILE
    selectors = set(re.findall(r'job=~"([^"]+)"', rules.read_text())) if rules.exists() else set()
    selectors.add(".*kexp-operator.*")
    docs = helm.render(*MONITORING, "--set", "fullnameOverride=lab")
    docs_pm = helm.render(
        *MONITORING, "--set", "serviceMonitor.enabled=false", "--set", "podMonitor.enabled=true"
    )
    service, pod = one(docs, "Service"), one(docs, "Deployment")["spec"]["template"]
    for monitor, labels in (
        (one(docs, "ServiceMonitor"), service["metadata"]["labels"]),
        (one(docs_pm, "PodMonitor"), pod["metadata"]["labels"]),
    ):
        job = labels[monitor["spec"]["jobLabel"]]
        for selector in selectors:
            assert re.fullmatch(selector, job), (selector, job)


# ---- dashboards -----------------------------------------------------------------------------
def test_every_dashboard_file_becomes_a_labelled_config_map(
    default: list[dict[str, Any]],
) -> None:
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    maps = by_kind(default, "ConfigMap")
    assert len(maps) == len(files)
    data = {k: v for m in maps for k, v in m["data"].items()}
    for path in files:
        assert json.loads(data[path.name]) == json.loads(path.read_text())
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.fixture
def chart_with_dashboard(tmp_path: Path) -> Path:
    """The chart with one known dashboard, independent of what dashboards/ holds today."""
    chart = tmp_path / "kexp"
    shutil.copytree(CHART, chart)
    shutil.rmtree(chart / "files" / "dashboards", ignore_errors=True)
    (chart / "files" / "dashboards").mkdir(parents=True)
    (chart / "files" / "dashboards" / "Lab_Overview.json").write_text(
        json.dumps({"title": "Lab <overview> & more", "panels": [{"id": 1}]}, indent=2) + "\n"
    )
    return chart


def test_dashboard_config_map(helm: Helm, chart_with_dashboard: Path) -> None:
    source = (chart_with_dashboard / "files/dashboards/Lab_Overview.json").read_text()
    docs = helm.render(
        "--set", "dashboards.namespace=monitoring",
        "--set", "dashboards.annotations.grafana_folder=kexp",
        chart=chart_with_dashboard,
    )  # fmt: skip
    config_map = one(docs, "ConfigMap")
    assert config_map["metadata"]["name"] == "kexp-dashboard-lab-overview"
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "kexp"}
    assert config_map["data"] == {"Lab_Overview.json": source}  # byte for byte
    docs = helm.render("--set", "dashboards.enabled=false", chart=chart_with_dashboard)
    assert not by_kind(docs, "ConfigMap")


# ---- the values schema ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("unknownKey=1", "at '': additional properties 'unknownKey' not allowed"),
        ("replicaCount=abc", "at '/replicaCount': got string, want integer"),
        ("replicaCount=2", "at '/replicaCount': maximum: got 2, want 1"),
        ("metrics.port=abc", "at '/metrics/port': got string, want integer"),
        ("image.tga=v1", "at '/image': additional properties 'tga' not allowed"),
        ("rbac.create=maybe", "at '/rbac/create': got string, want boolean"),
        ("watchNamespaces={team-*}", "at '/watchNamespaces/0': 'team-*' does not match pattern"),
        ("watchNamespaces={a,a}", "at '/watchNamespaces': items at 0 and 1 are equal"),
        ("serviceMonitor.interval=soon", "at '/serviceMonitor/interval'"),
        ("securityContext.privilegd=true", "additional properties 'privilegd' not allowed"),
        ("s3.endpoint=minio:9000", "at '/s3/endpoint'"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(helm: Helm, setting: str, message: str) -> None:
    error = helm.refuse("--set", setting)
    assert "values don't meet the specifications of the schema" in error
    assert message in error


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, prop in node.get("properties", {}).items():
        yield from schema_nodes(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")


def test_schema_closes_every_level_it_defines_and_documents_every_key() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in schema_nodes(schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, path or "(root)"
        for name, prop in node.get("properties", {}).items():
            assert prop.get("description", "").strip(), f"{path}.{name}"


def value_paths(node: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in OPAQUE_VALUES:
            yield from value_paths(value, f"{prefix}{key}.")


#: Values that are whole Kubernetes objects, documented as one.
OPAQUE_VALUES = {"podSecurityContext", "securityContext", "resources", "affinity"}


def test_values_yaml_schema_and_readme_agree() -> None:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    schema_paths = {
        p.strip(".")
        for p, _ in schema_nodes(schema)
        if p and "[]" not in p and not p.startswith(".global")
    }
    paths = set(value_paths(values))
    top_level_opaque = {p for p in schema_paths if p.split(".")[0] in OPAQUE_VALUES and "." in p}
    # Every value is in the schema, and every schema key (but the parts of whole Kubernetes
    # objects, and Helm's `global`) has a default in values.yaml.
    assert paths <= schema_paths
    assert schema_paths - top_level_opaque == paths
    # Every leaf (and whole object) has a `# --` comment right above it, and a README row.
    lines = text.splitlines()
    documented = set()
    stack: list[str] = []
    for index, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z0-9_]+):", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        stack = [*stack[:depth], match.group(2)]
        previous = index - 1
        while previous >= 0 and lines[previous].lstrip().startswith("#"):
            if lines[previous].lstrip().startswith("# --"):
                documented.add(".".join(stack))
                break
            previous -= 1
    leaves = {p for p in paths if not any(q.startswith(p + ".") for q in paths)}
    assert leaves - documented == set()
    for path in leaves:
        assert f"| `{path}` |" in readme, path
