"""The training workload: a ConfigMap with the resolved config, and a Job that runs the trainer.

One node: a plain batch Job. Several nodes (``resources.nodes`` > 1): an Indexed Job with one
pod per node and a headless Service, so pod ``<job>-0`` is reachable by name as torchrun's
rendezvous host; every pod runs ``torchrun --node-rank=$(JOB_COMPLETION_INDEX)``. That is all
multi-node DDP needs, with no extra operator in the cluster.
"""

from __future__ import annotations

from typing import Any

import yaml

from kexp.api import contract
from kexp.render import names
from kexp.render.resolved import ResolvedExperiment
from kexp.render.settings import TRAINER_UID, RenderSettings

CONTAINER_NAME = "trainer"


def _metadata(exp: ResolvedExperiment, name: str, role: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": exp.namespace,
        "labels": {**names.child_labels(exp.name, role), **names.tag_labels(exp.tags)},
        "ownerReferences": [exp.owner_reference()],
    }


def render_config_document(exp: ResolvedExperiment) -> dict[str, Any]:
    """What the trainer reads at ``$KEXP_CONFIG``: the resolved spec and where to write."""
    doc: dict[str, Any] = {
        "apiVersion": "kexp.io/v1alpha1",
        "kind": "ExperimentConfig",
        "metadata": {"name": exp.name, "namespace": exp.namespace, "uid": exp.uid},
        "spec": exp.spec,
        "storage": {"bucket": exp.bucket, "prefix": exp.s3_prefix},
    }
    if exp.init_checkpoint:
        doc["initCheckpoint"] = exp.init_checkpoint
    return doc


#: libyaml's emitter where PyYAML was built with it: the same YAML as ``yaml.safe_dump``, and
#: the pure-Python one was 5% of the operator's CPU while a thousand Experiments arrived.
_SAFE_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def render_config_map(exp: ResolvedExperiment) -> dict[str, Any]:
    """The ConfigMap mounted at ``contract.CONFIG_DIR``."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(exp, names.config_map_name(exp.name), "config"),
        "data": {
            contract.CONFIG_FILE: yaml.dump(
                render_config_document(exp), Dumper=_SAFE_DUMPER, sort_keys=True
            )
        },
    }


def _env(exp: ResolvedExperiment, settings: RenderSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": contract.ENV_CONFIG, "value": contract.CONFIG_PATH},
        {"name": contract.ENV_EXPERIMENT, "value": exp.name},
        {"name": contract.ENV_NAMESPACE, "value": exp.namespace},
        {"name": contract.ENV_UID, "value": exp.uid},
        {"name": contract.ENV_S3_BUCKET, "value": exp.bucket},
        {"name": contract.ENV_S3_PREFIX, "value": exp.s3_prefix},
        {"name": contract.ENV_S3_SECRET_DIR, "value": contract.S3_SECRET_DIR},
        {"name": contract.ENV_METRICS_PORT, "value": str(contract.METRICS_PORT)},
        # Python buffers stdout in containers; `kexp logs` should show lines as they happen.
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if exp.init_checkpoint:
        env.append({"name": contract.ENV_INIT_CHECKPOINT, "value": exp.init_checkpoint})
    if exp.nodes > 1:
        job = names.train_job_name(exp.name)
        service = names.rendezvous_service_name(exp.name)
        env += [
            {"name": contract.ENV_NNODES, "value": str(exp.nodes)},
            {"name": contract.ENV_NPROC_PER_NODE, "value": str(max(exp.gpus, 1))},
            {"name": "MASTER_ADDR", "value": f"{job}-0.{service}.{exp.namespace}.svc"},
            {"name": "MASTER_PORT", "value": str(contract.RENDEZVOUS_PORT)},
        ]
    env += [{"name": k, "value": v} for k, v in settings.extra_env]
    for item in exp.section("trainer").get("env") or []:
        env.append({"name": str(item["name"]), "value": str(item.get("value", ""))})
    return env


def _command(exp: ResolvedExperiment, settings: RenderSettings) -> list[str]:
    trainer = exp.section("trainer")
    if trainer.get("command"):
        return [str(c) for c in trainer["command"]]
    if exp.nodes > 1:
        return [
            "torchrun",
            f"--nnodes=$({contract.ENV_NNODES})",
            f"--nproc-per-node=$({contract.ENV_NPROC_PER_NODE})",
            "--node-rank=$(JOB_COMPLETION_INDEX)",
            "--master-addr=$(MASTER_ADDR)",
            "--master-port=$(MASTER_PORT)",
            "-m",
            settings.trainer_command[-1],
        ]
    return list(settings.trainer_command)


def _resources(exp: ResolvedExperiment) -> dict[str, Any]:
    res = exp.section("resources")
    requests: dict[str, str] = {
        "cpu": str(res.get("cpu") or "1"),
        "memory": str(res.get("memory") or "4Gi"),
    }
    limits: dict[str, str] = {"memory": requests["memory"]}
    if exp.gpus:
        # Extended resources must be requested and limited alike.
        requests[contract.GPU_RESOURCE] = limits[contract.GPU_RESOURCE] = str(exp.gpus)
    return {"requests": requests, "limits": limits}


def _pod_annotations(exp: ResolvedExperiment) -> dict[str, str]:
    return {
        k: v for k, v in exp.annotations.items() if k.startswith(contract.SIM_ANNOTATION_PREFIX)
    }


def render_pod_template(exp: ResolvedExperiment, settings: RenderSettings) -> dict[str, Any]:
    """The trainer pod: restricted security, config and S3 credentials mounted as files."""
    trainer = exp.section("trainer")
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": str(trainer.get("image") or settings.trainer_image),
        "imagePullPolicy": settings.image_pull_policy,
        "command": _command(exp, settings),
        "args": [str(a) for a in trainer.get("args") or []],
        "env": _env(exp, settings),
        "ports": [{"name": "metrics", "containerPort": contract.METRICS_PORT}],
        "resources": _resources(exp),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "volumeMounts": [
            {"name": "config", "mountPath": contract.CONFIG_DIR, "readOnly": True},
            {"name": "s3-credentials", "mountPath": contract.S3_SECRET_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, not the host's
            {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108 - an emptyDir
        ],
    }
    if exp.nodes > 1:
        container["ports"].append({"name": "rendezvous", "containerPort": contract.RENDEZVOUS_PORT})
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": names.config_map_name(exp.name)}},
            {
                "name": "s3-credentials",
                "secret": {"secretName": exp.secret_name, "defaultMode": 0o440},
            },
            {"name": "tmp", "emptyDir": {}},
            # PyTorch data loaders share tensors through /dev/shm; the default 64 MiB is too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }
    if exp.gpus:
        spec["tolerations"] = [
            {"key": contract.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        ]
    if exp.nodes > 1:
        spec["subdomain"] = names.rendezvous_service_name(exp.name)
    return {
        "metadata": {
            "labels": {**names.child_labels(exp.name, "train"), **names.tag_labels(exp.tags)},
            "annotations": _pod_annotations(exp),
        },
        "spec": spec,
    }


def render_train_job(exp: ResolvedExperiment, settings: RenderSettings) -> dict[str, Any]:
    """The training Job: plain for one node, Indexed (one pod per node) for several."""
    retry = exp.section("retry")
    job_spec: dict[str, Any] = {
        "backoffLimit": int(retry.get("backoffLimit", 2)),
        "template": render_pod_template(exp, settings),
    }
    if retry.get("activeDeadlineSeconds"):
        job_spec["activeDeadlineSeconds"] = int(retry["activeDeadlineSeconds"])
    if exp.nodes > 1:
        job_spec.update(
            {
                "completionMode": "Indexed",
                "completions": exp.nodes,
                "parallelism": exp.nodes,
            }
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(exp, names.train_job_name(exp.name), "train"),
        "spec": job_spec,
    }


def render_rendezvous_service(exp: ResolvedExperiment) -> dict[str, Any] | None:
    """The headless Service that names the pods of a multi-node run; None for one node."""
    if exp.nodes <= 1:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(exp, names.rendezvous_service_name(exp.name), "rendezvous"),
        "spec": {
            "clusterIP": "None",
            # Ranks must resolve each other before they are Ready, or rendezvous deadlocks.
            "publishNotReadyAddresses": True,
            "selector": names.child_labels(exp.name, "train"),
            "ports": [{"name": "rendezvous", "port": contract.RENDEZVOUS_PORT}],
        },
    }


def render_children(exp: ResolvedExperiment, settings: RenderSettings) -> list[dict[str, Any]]:
    """Everything an Experiment's training (or sweep) needs, in creation order."""
    if exp.spec.get("sweep"):
        # Imported here: the sweep renderer builds on this module's pod template.
        from kexp.render.sweep import render_sweep_children

        return render_sweep_children(exp, settings)
    children = [render_config_map(exp)]
    service = render_rendezvous_service(exp)
    if service is not None:
        children.append(service)
    children.append(render_train_job(exp, settings))
    return children
