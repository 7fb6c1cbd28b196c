"""A sweep's workload: one pod running Ray Tune (a Job), or a KubeRay RayJob.

Both run the same entry point, ``python -m kexp_trainers.tune``, with the trainer contract's
environment and mounts, so a sweep reads its config and writes its S3 files the same way on
either. ``spec.resources`` describe one trial:

- without ``sweep.rayCluster`` one pod is sized for ``maxConcurrentTrials`` trials (default 1)
  and starts a local Ray inside itself;
- with it, a RayJob asks KubeRay for a head pod (the Tune driver; it runs no trials) and
  ``workers`` worker pods of ``cpuPerWorker``/``memoryPerWorker`` (default: one trial's
  resources) with ``gpusPerWorker`` GPUs each. KubeRay tears the cluster down when the sweep
  ends; the RayJob stays as the record.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Final

from kexp.api import contract
from kexp.render import names
from kexp.render.resolved import ResolvedExperiment
from kexp.render.settings import SWEEP_COMMAND, RenderSettings
from kexp.render.training import _env, render_config_map, render_pod_template, render_train_job

ROLE: Final = "sweep"
HEAD_CONTAINER: Final = "ray-head"
WORKER_CONTAINER: Final = "ray-worker"
WORKER_GROUP: Final = "trials"
#: The Tune driver on the head needs little; it runs no trials (``num-cpus: 0``).
HEAD_RESOURCES: Final = {"cpu": "1", "memory": "2Gi"}
#: Seconds KubeRay keeps a finished sweep's Ray cluster (for its logs) before deleting it.
RAY_CLUSTER_TTL_S: Final = 60
RAY_PORTS: Final = (("gcs", 6379), ("dashboard", 8265), ("client", 10001))
_QUANTITY: Final = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([A-Za-z]*)$")
_CPU_UNITS: Final = {"": 1.0, "m": 0.001}


def sweep_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec.sweep``, empty when absent."""
    value = spec.get("sweep")
    return value if isinstance(value, dict) else {}


def uses_ray_cluster(spec: dict[str, Any]) -> bool:
    """The sweep asks for its own Ray cluster (a KubeRay RayJob)."""
    return bool(sweep_spec(spec).get("rayCluster"))


def local_concurrency(spec: dict[str, Any]) -> int:
    """Trials a one-pod sweep runs at once (``maxConcurrentTrials``, default 1)."""
    return int(sweep_spec(spec).get("maxConcurrentTrials") or 1)


def cpu_count(quantity: str | int | float) -> float:
    """CPUs in a Kubernetes CPU quantity ("4", "500m", 1.5)."""
    match = _QUANTITY.match(str(quantity).strip())
    if match is None or match.group(2) not in _CPU_UNITS:
        return float(quantity)  # e.g. "1e3"; anything else is refused by the schema
    return float(match.group(1)) * _CPU_UNITS[match.group(2)]


def trial_resources(spec: dict[str, Any]) -> dict[str, float]:
    """What Ray reserves for one trial: ``{"cpu": n, "gpu": n}`` from ``spec.resources``."""
    res = spec.get("resources") or {}
    return {"cpu": cpu_count(res.get("cpu") or "1"), "gpu": float(res.get("gpus") or 0)}


def scale_quantity(quantity: str | int, factor: int) -> str:
    """``quantity`` times ``factor``, in its own unit: "4Gi" x 3 is "12Gi", "500m" x 2 "1000m"."""
    text = str(quantity).strip()
    if factor == 1:
        return text
    match = _QUANTITY.match(text)
    if match is None:
        return text  # exponent forms; never produced by kexp, left as given
    value = float(match.group(1)) * factor
    number = str(int(value)) if value.is_integer() else f"{value:g}"
    return number + match.group(2)


def _sweep_view(exp: ResolvedExperiment, trials: int) -> ResolvedExperiment:
    """The experiment as the sweep pod's renderer sees it: sized for ``trials`` trials, and
    without a custom command (the pod runs the tune entry point, whatever the spec says)."""
    res = dict(exp.section("resources"))
    res["cpu"] = scale_quantity(res.get("cpu") or "1", trials)
    res["memory"] = scale_quantity(res.get("memory") or "4Gi", trials)
    res["gpus"] = int(res.get("gpus") or 0) * trials
    res["nodes"] = 1
    trainer = {k: v for k, v in exp.section("trainer").items() if k not in ("command", "args")}
    spec = {**exp.spec, "resources": res, "trainer": trainer}
    return dataclasses.replace(exp, spec=spec)


def _sweep_settings(settings: RenderSettings) -> RenderSettings:
    # Ray keeps a session file under $HOME; the trainer's root filesystem is read-only.
    env = (*settings.extra_env, ("HOME", "/tmp"))  # noqa: S108 - the pod's emptyDir
    return dataclasses.replace(settings, trainer_command=SWEEP_COMMAND, extra_env=env)


def _relabel(obj: dict[str, Any]) -> None:
    obj["metadata"]["labels"][contract.LABEL_ROLE] = ROLE


def render_sweep_job(exp: ResolvedExperiment, settings: RenderSettings) -> dict[str, Any]:
    """The one-pod sweep: a Job whose pod starts a local Ray and runs the Tuner.

    A retried pod resumes the sweep from its Tune state in S3, so backoffLimit keeps its
    meaning.
    """
    job = render_train_job(_sweep_view(exp, local_concurrency(exp.spec)), _sweep_settings(settings))
    job["metadata"]["name"] = names.sweep_name(exp.name)
    _relabel(job)
    _relabel(job["spec"]["template"])
    return job


def _ray_pod(
    exp: ResolvedExperiment,
    settings: RenderSettings,
    *,
    container_name: str,
    image: str,
    resources: dict[str, Any],
    ports: list[dict[str, Any]],
) -> dict[str, Any]:
    """A Ray pod template: the trainer pod's security, mounts and environment, Ray's ports."""
    view = _sweep_view(exp, 1)
    sweep_settings = _sweep_settings(settings)
    pod = render_pod_template(view, sweep_settings)
    _relabel(pod)
    container = pod["spec"]["containers"][0]
    container.update(
        {
            "name": container_name,
            "image": image,
            "env": _env(view, sweep_settings),
            "ports": ports,
            "resources": resources,
        }
    )
    # KubeRay supplies the command (ray start ...); the image's entrypoint must not run.
    container.pop("command", None)
    container.pop("args", None)
    return pod


def _worker_resources(exp: ResolvedExperiment, ray: dict[str, Any]) -> dict[str, Any]:
    res = exp.section("resources")
    cpu = str(ray.get("cpuPerWorker") or res.get("cpu") or "1")
    memory = str(ray.get("memoryPerWorker") or res.get("memory") or "4Gi")
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    limits: dict[str, str] = {"cpu": cpu, "memory": memory}
    gpus = int(ray.get("gpusPerWorker") or 0)
    if gpus:
        requests[contract.GPU_RESOURCE] = limits[contract.GPU_RESOURCE] = str(gpus)
    return {"requests": requests, "limits": limits}


def render_ray_job(exp: ResolvedExperiment, settings: RenderSettings) -> dict[str, Any]:
    """The KubeRay RayJob (``ray.io/v1``) of a sweep with ``spec.sweep.rayCluster``."""
    ray = dict(sweep_spec(exp.spec).get("rayCluster") or {})
    workers = int(ray.get("workers") or 1)
    image = str(ray.get("image") or exp.section("trainer").get("image") or settings.trainer_image)
    head_ports = [{"name": n, "containerPort": p} for n, p in RAY_PORTS]
    head_ports.append({"name": "metrics", "containerPort": contract.METRICS_PORT})
    head = _ray_pod(
        exp,
        settings,
        container_name=HEAD_CONTAINER,
        image=image,
        resources={
            "requests": dict(HEAD_RESOURCES),
            "limits": {"memory": HEAD_RESOURCES["memory"]},
        },
        ports=head_ports,
    )
    head["spec"].pop("tolerations", None)  # the head needs no GPU node
    worker = _ray_pod(
        exp,
        settings,
        container_name=WORKER_CONTAINER,
        image=image,
        resources=_worker_resources(exp, ray),
        ports=[],
    )
    if int(ray.get("gpusPerWorker") or 0):
        worker["spec"]["tolerations"] = [
            {"key": contract.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        ]
    else:
        worker["spec"].pop("tolerations", None)
    retry = exp.section("retry")
    spec: dict[str, Any] = {
        "entrypoint": " ".join(SWEEP_COMMAND),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": RAY_CLUSTER_TTL_S,
        # A retry gets a new cluster; the entry point resumes the sweep from its Tune state.
        "backoffLimit": int(retry.get("backoffLimit", 2)),
        "rayClusterSpec": {
            "headGroupSpec": {
                # The dashboard is Ray's job-submission API: the submitter pod must reach it.
                "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},  # noqa: S104
                "template": head,
            },
            "workerGroupSpecs": [
                {
                    "groupName": WORKER_GROUP,
                    "replicas": workers,
                    "minReplicas": workers,
                    "maxReplicas": workers,
                    "rayStartParams": {},
                    "template": worker,
                }
            ],
        },
    }
    if retry.get("activeDeadlineSeconds"):
        spec["activeDeadlineSeconds"] = int(retry["activeDeadlineSeconds"])
    return {
        "apiVersion": f"{contract.RAY_GROUP}/{contract.RAY_VERSION}",
        "kind": contract.RAYJOB_KIND,
        "metadata": {
            "name": names.sweep_name(exp.name),
            "namespace": exp.namespace,
            "labels": {**names.child_labels(exp.name, ROLE), **names.tag_labels(exp.tags)},
            "ownerReferences": [exp.owner_reference()],
        },
        "spec": spec,
    }


def render_sweep_children(
    exp: ResolvedExperiment, settings: RenderSettings
) -> list[dict[str, Any]]:
    """A sweep's children in creation order: its config, then its Job or RayJob."""
    workload = (
        render_ray_job(exp, settings)
        if uses_ray_cluster(exp.spec)
        else render_sweep_job(exp, settings)
    )
    return [render_config_map(exp), workload]
