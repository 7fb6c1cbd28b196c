"""The Helm chart installed on the local stack's real kube-apiserver.

What the chart's RBAC allows is asked of the API server itself (SubjectAccessReview, the same
authorizer every request goes through), verb by verb, for what the operator needs and for what
it must never do. The namespaced install then runs the real operator with nothing but its
ServiceAccount's token through templates, a multi-node run and initFrom, and checks that no
API call was refused. The Deployment's own pod runs on a kwok node (simulated: it is admitted,
scheduled and Ready, but runs no container).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kexp.api import contract
from kexp.dev import cluster, toolchain
from kexp.dev.stack import Stack
from kexp.render.names import rendezvous_service_name
from tests.conftest import OperatorProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kexp"
GROUP, VERSION = "kexp.io", "v1alpha1"
CRD_NAMES = ("experiments.kexp.io", "experimenttemplates.kexp.io")

#: (verb, API group, resource, subresource): every call the operator makes in a namespace.
NEEDED = [
    ("get", GROUP, "experiments", ""),
    ("list", GROUP, "experiments", ""),
    ("watch", GROUP, "experiments", ""),
    ("patch", GROUP, "experiments", ""),
    ("patch", GROUP, "experiments", "status"),
    ("update", GROUP, "experiments", "finalizers"),
    ("list", GROUP, "experimenttemplates", ""),
    ("watch", GROUP, "experimenttemplates", ""),
    ("create", "batch", "jobs", ""),
    ("get", "batch", "jobs", ""),
    ("list", "batch", "jobs", ""),
    ("watch", "batch", "jobs", ""),
    ("list", "", "pods", ""),
    ("watch", "", "pods", ""),
    ("create", "", "configmaps", ""),
    ("create", "", "services", ""),
    ("get", "", "secrets", ""),
    ("create", "", "events", ""),
    ("create", "ray.io", "rayjobs", ""),
    ("get", "ray.io", "rayjobs", ""),
    ("list", "ray.io", "rayjobs", ""),
    ("watch", "ray.io", "rayjobs", ""),
]
#: What kopf watches across namespaces when it watches them all.
CLUSTER_WIDE_WATCHES = [
    (verb, group, resource, "")
    for verb in ("list", "watch")
    for group, resource in (
        (GROUP, "experiments"),
        (GROUP, "experimenttemplates"),
        ("batch", "jobs"),
        ("", "pods"),
        ("ray.io", "rayjobs"),
    )
]
CRD_DISCOVERY = [
    ("list", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions", ""),
]
#: kopf's namespace observer, only when it watches named namespaces.
NAMESPACE_DISCOVERY = [("list", "", "namespaces", ""), ("watch", "", "namespaces", "")]
#: Never, in a namespace the operator watches.
REFUSED_IN_NAMESPACE = [
    *((verb, "", "secrets", "") for verb in ("list", "watch", "create", "update", "patch")),
    ("delete", "", "secrets", ""),
    *((verb, "batch", "jobs", "") for verb in ("delete", "deletecollection", "update", "patch")),
    *((verb, "", "pods", "") for verb in ("create", "get", "delete", "patch")),
    ("create", "", "pods", "exec"),
    ("get", "", "pods", "log"),
    *((verb, "", "configmaps", "") for verb in ("get", "list", "update", "delete")),
    *((verb, "", "services", "") for verb in ("get", "update", "delete")),
    *((verb, GROUP, "experiments", "") for verb in ("create", "update", "delete")),
    ("update", GROUP, "experiments", "status"),
    *((verb, GROUP, "experimenttemplates", "") for verb in ("get", "create", "patch", "delete")),
    ("delete", "", "events", ""),
    ("create", "apps", "deployments", ""),
    ("create", "", "serviceaccounts", "token"),
    ("create", "", "persistentvolumeclaims", ""),
    ("create", "rbac.authorization.k8s.io", "roles", ""),
    ("create", "rbac.authorization.k8s.io", "rolebindings", ""),
]
#: Never, at cluster scope.
REFUSED_CLUSTER_WIDE = [
    *(
        (verb, "apiextensions.k8s.io", "customresourcedefinitions", "")
        for verb in ("create", "update", "patch", "delete")
    ),
    *((verb, "", "namespaces", "") for verb in ("create", "delete")),
    ("list", "", "secrets", ""),
    ("watch", "", "secrets", ""),
    ("list", "", "nodes", ""),
    ("create", "rbac.authorization.k8s.io", "clusterroles", ""),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", ""),
    ("escalate", "rbac.authorization.k8s.io", "clusterroles", ""),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", ""),
]


@dataclass
class Release:
    """One `helm install` of the chart, and what to ask the API server about it."""

    name: str
    namespace: str
    kube: Any
    env: dict[str, str]
    helm: Path
    installed: bool = field(default=False)

    @property
    def fullname(self) -> str:
        return f"{self.name}-kexp"

    def run(self, *args: str) -> str:
        proc = subprocess.run(
            [str(self.helm), *args], env=self.env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def install(self, *args: str) -> str:
        out = self.run("install", self.name, str(CHART), "--namespace", self.namespace, *args)
        self.installed = True
        return out

    def uninstall(self) -> None:
        self.run("uninstall", self.name, "--namespace", self.namespace)
        self.installed = False

    def can(self, verb: str, group: str, resource: str, subresource: str, namespace: str) -> bool:
        """Whether the API server's authorizer lets the operator's ServiceAccount do this."""
        sa_ns = self.namespace
        review = client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{sa_ns}:{self.fullname}",
                groups=[
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{sa_ns}",
                    "system:authenticated",
                ],
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace or None,
                    verb=verb,
                    group=group,
                    resource=resource,
                    subresource=subresource or None,
                ),
            )
        )
        answer = client.AuthorizationV1Api(self.kube).create_subject_access_review(review)
        return bool(answer.status.allowed)

    def refused(
        self, checks: list[tuple[str, str, str, str]], namespace: str
    ) -> list[tuple[str, ...]]:
        return [c for c in checks if not self.can(*c, namespace=namespace)]

    def allowed(
        self, checks: list[tuple[str, str, str, str]], namespace: str
    ) -> list[tuple[str, ...]]:
        return [c for c in checks if self.can(*c, namespace=namespace)]


def new_namespace(kube: Any, prefix: str, to_delete: list[str], **labels: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    cluster.ensure_namespace(kube, name)
    if labels:
        client.CoreV1Api(kube).patch_namespace(name, {"metadata": {"labels": labels}})
    to_delete.append(name)
    return name


#: The Pod Security profile the operator's pod is written for: admission refuses anything less.
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    return toolchain.ensure_tools(["helm"]).path("helm")


@pytest.fixture
def release(
    stack: Stack,
    kube: Any,
    helm_bin: Path,
    namespaces_to_delete: list[str],
    tmp_path: Path,
) -> Iterator[Release]:
    env = {
        **os.environ,
        "KUBECONFIG": str(stack.kubeconfig),
        "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
        "HELM_DATA_HOME": str(tmp_path / "helm-data"),
    }
    namespace = new_namespace(kube, "kexp-rel", namespaces_to_delete, **RESTRICTED)
    rel = Release(f"kx{secrets.token_hex(3)}", namespace, kube, env, helm_bin)
    yield rel
    if rel.installed:  # the test failed before its own uninstall
        rel.uninstall()


def wait_available(kube: Any, rel: Release) -> None:
    apps = client.AppsV1Api(kube)

    def available() -> bool:
        status = apps.read_namespaced_deployment(rel.fullname, rel.namespace).status
        return (status.available_replicas or 0) == 1

    # Admission (Pod Security "restricted"), the ReplicaSet, the scheduler and kwok all agree.
    wait_until(available, timeout_s=60, what=f"Deployment {rel.fullname} to be available")


def gone(read: Any, *args: str) -> bool:
    try:
        read(*args)
    except ApiException as exc:
        return exc.status == 404
    return False


def crds_established(kube: Any) -> bool:
    ext = client.ApiextensionsV1Api(kube)
    for name in CRD_NAMES:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        if not any(c.type == "Established" and c.status == "True" for c in conditions):
            return False
    return True


def test_cluster_wide_install_grants_what_the_operator_needs_and_nothing_else(
    kube: Any, release: Release, namespaces_to_delete: list[str]
) -> None:
    research = new_namespace(kube, "kexp-research", namespaces_to_delete)
    # Without --skip-crds: the chart installs the CRDs, or leaves them be if the session
    # already did.
    out = release.install(
        "--set", "s3.createSecret=true",
        "--set", "s3.secretName=kexp-s3-chart",
        "--set", f"s3.secretNamespaces={{{research}}}",
        "--set", "s3.endpoint=http://minio.example:9000",
        "--set", "s3.accessKeyId=quick",
        "--set", "s3.secretAccessKey=start",
    )  # fmt: skip
    assert "The operator watches every namespace." in out  # NOTES
    wait_until(lambda: crds_established(kube), timeout_s=30, what="the CRDs to be Established")
    wait_available(kube, release)

    core = client.CoreV1Api(kube)
    # The quick-start Secret, with the contract's keys, in the namespace asked for.
    secret = core.read_namespaced_secret("kexp-s3-chart", research)
    assert sorted(secret.data) == sorted(contract.S3_SECRET_KEYS)
    # One dashboard ConfigMap per file the chart carries, for the Grafana sidecar.
    dashboards = core.list_namespaced_config_map(
        release.namespace, label_selector="grafana_dashboard=1"
    ).items
    assert len(dashboards) == len(list((CHART / "files" / "dashboards").glob("*.json")))

    assert release.refused(NEEDED, research) == []
    assert release.refused(CLUSTER_WIDE_WATCHES + CRD_DISCOVERY, "") == []
    assert release.allowed(REFUSED_IN_NAMESPACE, research) == []
    assert release.allowed(REFUSED_CLUSTER_WIDE + NAMESPACE_DISCOVERY, "") == []

    release.uninstall()
    rbac, apps = client.RbacAuthorizationV1Api(kube), client.AppsV1Api(kube)
    for read, args in (
        (rbac.read_cluster_role, (release.fullname,)),
        (rbac.read_cluster_role, (f"{release.fullname}-discovery",)),
        (rbac.read_cluster_role_binding, (release.fullname,)),
        (rbac.read_cluster_role_binding, (f"{release.fullname}-discovery",)),
        (core.read_namespaced_service_account, (release.fullname, release.namespace)),
        (apps.read_namespaced_deployment, (release.fullname, release.namespace)),
        (core.read_namespaced_secret, ("kexp-s3-chart", research)),
        (core.read_namespaced_service, (f"{release.fullname}-metrics", release.namespace)),
        *(
            (core.read_namespaced_config_map, (d.metadata.name, release.namespace))
            for d in dashboards
        ),
    ):
        wait_until(lambda r=read, a=args: gone(r, *a), what=f"{read.__name__}{args} to be gone")
    wait_until(
        lambda: not release.can("list", GROUP, "experiments", "", research),
        what="the operator's grants to be revoked",
    )
    # Deleting a CRD deletes every Experiment: uninstall must never do that.
    assert crds_established(kube)


def operator_kubeconfig(stack: Stack, kube: Any, rel: Release, path: Path) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount, and as nothing else."""
    token = (
        client.CoreV1Api(kube)
        .create_namespaced_service_account_token(
            rel.fullname, rel.namespace, {"spec": {"expirationSeconds": 3600}}
        )
        .status.token
    )
    config = yaml.safe_load(stack.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return path


def experiment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {"source": {"repository": "https://example.org/lab.git", "commit": "c" * 40}}
        | spec,
    }


def test_namespaced_install_runs_the_operator_on_its_own_token(
    stack: Stack,
    kube: Any,
    crds: None,
    namespace: str,
    release: Release,
    namespaces_to_delete: list[str],
    tmp_path: Path,
) -> None:
    other = new_namespace(kube, "kexp-other", namespaces_to_delete)
    # The session installed the CRDs already (`crds`); a second install path is not needed.
    out = release.install("--skip-crds", "--set", f"watchNamespaces={{{namespace}}}")
    assert f"The operator watches the namespaces {namespace}." in out
    wait_available(kube, release)

    rbac = client.RbacAuthorizationV1Api(kube)
    assert [r.metadata.name for r in rbac.list_namespaced_role(namespace).items] == [
        release.fullname
    ]
    assert rbac.list_namespaced_role(other).items == []
    assert gone(rbac.read_cluster_role, release.fullname)

    assert release.refused(NEEDED, namespace) == []
    assert release.refused(CRD_DISCOVERY + NAMESPACE_DISCOVERY, "") == []
    assert release.allowed(REFUSED_IN_NAMESPACE, namespace) == []
    assert release.allowed(REFUSED_CLUSTER_WIDE, "") == []
    # Nothing at all in a namespace it does not watch, nor across namespaces.
    assert release.allowed(NEEDED, other) == []
    assert release.allowed(CLUSTER_WIDE_WATCHES, "") == []

    # The operator itself, authenticated as the ServiceAccount: every kind of call it makes.
    kubeconfig = operator_kubeconfig(stack, kube, release, tmp_path / "operator.kubeconfig")
    op = OperatorProcess(
        stack, [namespace], tmp_path / "operator.log", env={"KUBECONFIG": str(kubeconfig)}
    )
    try:
        op.wait_ready()
        custom = client.CustomObjectsApi(kube)
        template = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ExperimentTemplate",
            "metadata": {"name": "cartpole"},
            "spec": {
                "algorithm": "PPO",
                "environment": {"id": "CartPole-v1"},
                "training": {"totalSteps": 1000},
            },
        }
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "experimenttemplates", template
        )
        # Two nodes: ConfigMap, headless Service and an Indexed Job; initFrom: a label list.
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "experiments",
            experiment("ddp", templateRef="cartpole", resources={"nodes": 2, "gpus": 1}),
        )
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "experiments",
            experiment("warm", templateRef="cartpole", initFrom={"experiment": "ddp"}),
        )

        def phase(name: str) -> str | None:
            obj = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "experiments", name
            )
            found: str | None = (obj.get("status") or {}).get("phase")
            return found

        for name in ("ddp", "warm"):
            # The kwok pods end at once; results.json is absent, so the runs end Failed after
            # the operator read the S3 Secret: either way the whole path ran.
            wait_until(
                lambda n=name: phase(n) in ("Succeeded", "Failed"),
                timeout_s=90,
                what=f"{name} to finish (now {phase(name)}): {op.logs()}",
            )
        core = client.CoreV1Api(kube)
        service = core.read_namespaced_service(rendezvous_service_name("ddp"), namespace)
        assert service.spec.cluster_ip == "None"
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=ddp,involvedObject.kind=Experiment"
        ).items
        assert "JobCreated" in [e.reason for e in events]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5
        ) as resp:
            metrics = resp.read().decode()
        refused_calls = [
            line
            for line in metrics.splitlines()
            if line.startswith("kexp_operator_api_errors_total{") and float(line.split()[-1]) > 0
        ]
        assert refused_calls == [], op.logs()
        log = op.log_path.read_text(errors="replace")
        forbidden = [line for line in log.splitlines() if re.search(r"\b403\b|Forbidden", line)]
        assert forbidden == [], "\n".join(forbidden)
    finally:
        op.stop()

    release.uninstall()
    wait_until(
        lambda: gone(rbac.read_namespaced_role, release.fullname, namespace),
        what="the Role to be gone",
    )


def test_a_secret_the_operator_may_not_read_is_a_condition_not_a_crash(
    stack: Stack,
    kube: Any,
    crds: None,
    namespace: str,
    release: Release,
    tmp_path: Path,
) -> None:
    # rbac.secretNames narrows the operator's `get` to the named Secrets.
    release.install(
        "--skip-crds", "--set", f"watchNamespaces={{{namespace}}}", "--set",
        "rbac.secretNames={kexp-s3}",
    )  # fmt: skip
    kubeconfig = operator_kubeconfig(stack, kube, release, tmp_path / "operator.kubeconfig")
    op = OperatorProcess(
        stack, [namespace], tmp_path / "operator.log", env={"KUBECONFIG": str(kubeconfig)}
    )
    custom = client.CustomObjectsApi(kube)

    def status(name: str) -> dict[str, Any]:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "experiments", name)
        found: dict[str, Any] = obj.get("status") or {}
        return found

    try:
        op.wait_ready()
        base = {"algorithm": "PPO", "environment": {"id": "CartPole-v1"}}
        base["training"] = {"totalSteps": 1000}
        for name, storage in (("team", {"secretRef": "team-s3"}), ("lab", {})):
            body = experiment(name, **base, storage=storage)
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "experiments", body)
        team = wait_until(
            lambda: s if (s := status("team")).get("reason") == "S3SecretForbidden" else None,
            what=f"S3SecretForbidden: {op.logs()}",
        )
        assert team["phase"] == "Pending"
        assert "'team-s3' (spec.storage.secretRef)" in team["message"]
        assert "rbac.secretNames" in team["message"]
        # The Secret it may read: that run goes on, and the operator is still up.
        lab = wait_until(lambda: s if (s := status("lab")).get("jobs") else None, what="lab's Job")
        assert lab["jobs"] == {"train": "lab-train"}
        assert op.proc.poll() is None
    finally:
        op.stop()
