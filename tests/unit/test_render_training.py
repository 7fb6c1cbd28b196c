"""The training renderers, compared as whole objects (jobset's table-driven style)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from kexp.render import names
from kexp.render.resolved import ResolvedExperiment
from kexp.render.settings import RenderSettings
from kexp.render.training import (
    render_children,
    render_config_map,
    render_rendezvous_service,
    render_train_job,
)

UID = "0f1e2d3c-0000-4000-8000-000000000001"
SETTINGS = RenderSettings(trainer_image="kexp/trainer:test")
OWNER = {
    "apiVersion": "kexp.io/v1alpha1",
    "kind": "Experiment",
    "name": "lr-high",
    "uid": UID,
    "controller": True,
    "blockOwnerDeletion": True,
}
LABELS = {
    "kexp.io/experiment": "lr-high",
    "kexp.io/role": "train",
    "app.kubernetes.io/managed-by": "kexp",
    "kexp.io/tag.lr-ablation": "true",
}
SPEC: dict[str, Any] = {
    "algorithm": "PPO",
    "tags": ["lr-ablation"],
    "environment": {"id": "highway-fast-v0", "numEnvs": 8},
    "hyperparameters": {"learningRate": 3e-4},
    "training": {"totalSteps": 1000, "seed": 1},
    "resources": {"gpus": 1, "cpu": "4", "memory": "16Gi", "nodes": 1},
    "retry": {"backoffLimit": 1, "activeDeadlineSeconds": 3600},
}


def experiment(**overrides: Any) -> ResolvedExperiment:
    spec = copy.deepcopy(SPEC)
    for key, value in overrides.pop("spec", {}).items():
        spec[key] = value
    return ResolvedExperiment(
        name="lr-high",
        namespace="research",
        uid=UID,
        spec=spec,
        annotations=overrides.pop("annotations", {"note": "not copied"}),
        init_checkpoint=overrides.pop("init_checkpoint", None),
    )


BASE_ENV = [
    {"name": "KEXP_CONFIG", "value": "/etc/kexp/config.yaml"},
    {"name": "KEXP_EXPERIMENT", "value": "lr-high"},
    {"name": "KEXP_NAMESPACE", "value": "research"},
    {"name": "KEXP_UID", "value": UID},
    {"name": "KEXP_S3_BUCKET", "value": "experiments"},
    {"name": "KEXP_S3_PREFIX", "value": f"research/lr-high/{UID}/"},
    {"name": "KEXP_S3_SECRET_DIR", "value": "/var/run/secrets/kexp/s3"},
    {"name": "KEXP_METRICS_PORT", "value": "9090"},
    {"name": "PYTHONUNBUFFERED", "value": "1"},
]

EXPECTED_SINGLE_NODE_JOB: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {
        "name": "lr-high-train",
        "namespace": "research",
        "labels": LABELS,
        "ownerReferences": [OWNER],
    },
    "spec": {
        "backoffLimit": 1,
        "activeDeadlineSeconds": 3600,
        "template": {
            "metadata": {"labels": LABELS, "annotations": {}},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 1000,
                    "runAsGroup": 1000,
                    "fsGroup": 1000,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "trainer",
                        "image": "kexp/trainer:test",
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["python", "-m", "kexp_trainers.run"],
                        "args": [],
                        "env": BASE_ENV,
                        "ports": [{"name": "metrics", "containerPort": 9090}],
                        "resources": {
                            "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                            "limits": {"memory": "16Gi", "nvidia.com/gpu": "1"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True,
                        },
                        "volumeMounts": [
                            {"name": "config", "mountPath": "/etc/kexp", "readOnly": True},
                            {
                                "name": "s3-credentials",
                                "mountPath": "/var/run/secrets/kexp/s3",
                                "readOnly": True,
                            },
                            {"name": "tmp", "mountPath": "/tmp"},
                            {"name": "dshm", "mountPath": "/dev/shm"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "config", "configMap": {"name": "lr-high-config"}},
                    {
                        "name": "s3-credentials",
                        "secret": {"secretName": "kexp-s3", "defaultMode": 0o440},
                    },
                    {"name": "tmp", "emptyDir": {}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                ],
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
        },
    },
}


def test_single_node_job_is_exactly_as_expected() -> None:
    assert render_train_job(experiment(), SETTINGS) == EXPECTED_SINGLE_NODE_JOB


def test_multi_node_job_is_indexed_with_torchrun_rendezvous_on_rank_zero() -> None:
    exp = experiment(spec={"resources": {"gpus": 4, "nodes": 3, "cpu": "8", "memory": "32Gi"}})
    job = render_train_job(exp, SETTINGS)

    expected = copy.deepcopy(EXPECTED_SINGLE_NODE_JOB)
    expected["spec"].update({"completionMode": "Indexed", "completions": 3, "parallelism": 3})
    pod = expected["spec"]["template"]["spec"]
    pod["subdomain"] = "lr-high-ddp"
    container = pod["containers"][0]
    container["command"] = [
        "torchrun",
        "--nnodes=$(KEXP_NNODES)",
        "--nproc-per-node=$(KEXP_NPROC_PER_NODE)",
        "--node-rank=$(JOB_COMPLETION_INDEX)",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        "-m",
        "kexp_trainers.run",
    ]
    container["env"] = [
        *BASE_ENV,
        {"name": "KEXP_NNODES", "value": "3"},
        {"name": "KEXP_NPROC_PER_NODE", "value": "4"},
        {"name": "MASTER_ADDR", "value": "lr-high-train-0.lr-high-ddp.research.svc"},
        {"name": "MASTER_PORT", "value": "29500"},
    ]
    container["ports"].append({"name": "rendezvous", "containerPort": 29500})
    container["resources"] = {
        "requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "4"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "4"},
    }
    assert job == expected


def test_multi_node_gets_a_headless_service_selecting_its_pods() -> None:
    exp = experiment(spec={"resources": {"nodes": 2}})
    assert render_rendezvous_service(exp) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "lr-high-ddp",
            "namespace": "research",
            "labels": {**LABELS, "kexp.io/role": "rendezvous"},
            "ownerReferences": [OWNER],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {
                "kexp.io/experiment": "lr-high",
                "kexp.io/role": "train",
                "app.kubernetes.io/managed-by": "kexp",
            },
            "ports": [{"name": "rendezvous", "port": 29500}],
        },
    }
    assert render_rendezvous_service(experiment()) is None
    kinds = [c["kind"] for c in render_children(exp, SETTINGS)]
    assert kinds == ["ConfigMap", "Service", "Job"]


def test_custom_trainer_overrides_image_command_args_and_adds_env() -> None:
    exp = experiment(
        spec={
            "algorithm": "Custom",
            "trainer": {
                "image": "lab/planner:abc123",
                "command": ["python", "train.py"],
                "args": ["--fast"],
                "env": [{"name": "WANDB_MODE", "value": "offline"}],
            },
            "resources": {"cpu": "2", "memory": "8Gi"},
        }
    )
    container = render_train_job(exp, SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "lab/planner:abc123"
    assert container["command"] == ["python", "train.py"]
    assert container["args"] == ["--fast"]
    assert container["env"] == [*BASE_ENV, {"name": "WANDB_MODE", "value": "offline"}]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "8Gi"},
    }
    assert "tolerations" not in render_train_job(exp, SETTINGS)["spec"]["template"]["spec"]


def test_init_checkpoint_reaches_env_and_config() -> None:
    uri = "s3://experiments/research/bc/uid-1/checkpoints/best.pt"
    exp = experiment(init_checkpoint=uri)
    env = render_train_job(exp, SETTINGS)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "KEXP_INIT_CHECKPOINT", "value": uri} in env
    config = yaml.safe_load(render_config_map(exp)["data"]["config.yaml"])
    assert config["initCheckpoint"] == uri


def test_config_map_carries_the_resolved_spec_and_storage() -> None:
    cm = render_config_map(experiment(spec={"storage": {"bucket": "lab", "prefix": "team-a/"}}))
    assert cm["metadata"]["name"] == "lr-high-config"
    assert cm["metadata"]["ownerReferences"] == [OWNER]
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["spec"]["hyperparameters"] == {"learningRate": 3e-4}
    assert config["storage"] == {"bucket": "lab", "prefix": f"team-a/research/lr-high/{UID}/"}
    assert config["metadata"] == {"name": "lr-high", "namespace": "research", "uid": UID}


def test_only_simulation_annotations_are_copied_to_pods() -> None:
    exp = experiment(annotations={"sim.kexp.io/run-for": "3s", "team": "planning"})
    template = render_train_job(exp, SETTINGS)["spec"]["template"]
    assert template["metadata"]["annotations"] == {"sim.kexp.io/run-for": "3s"}


@pytest.mark.parametrize(
    ("experiment_name", "expected"),
    [
        ("short", "short-train"),
        ("a" * 57, "a" * 57 + "-train"),
    ],
)
def test_child_names_are_the_experiment_name_plus_a_suffix(
    experiment_name: str, expected: str
) -> None:
    assert names.train_job_name(experiment_name) == expected


def test_long_child_names_are_shortened_stably_and_uniquely() -> None:
    long_a = "ppo-highway-" + "x" * 80
    long_b = "ppo-highway-" + "x" * 79 + "y"
    a1, a2, b = (names.train_job_name(n) for n in (long_a, long_a, long_b))
    assert a1 == a2
    assert a1 != b
    assert len(a1) <= 63
    assert a1.endswith("-train")
