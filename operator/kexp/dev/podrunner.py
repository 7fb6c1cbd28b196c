"""Run a Job's trainer pod as a local process, for stacks whose nodes cannot run containers.

kwok's nodes simulate pods; to still run the real training, this takes the Job's pod template
(command, arguments, environment), the ConfigMap and Secret it mounts, writes the mounted
files into a work dir, and starts the same command as a process on this machine. The only
differences from the pod are the file locations ($KEXP_CONFIG and $KEXP_S3_SECRET_DIR point at
the copies) and the Python interpreter (this one, where kexp's trainers are installed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kubernetes import client

from kexp.api import contract


def _volume_source(pod: dict[str, Any], mount_path: str) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    name = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == mount_path)
    return next(v for v in pod["spec"]["volumes"] if v["name"] == name)


def pod_process_args(
    api: Any, namespace: str, job: dict[str, Any], workdir: Path, metrics_port: int = 0
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run ``job``'s trainer here (pure, apart from reading)."""
    core = client.CoreV1Api(api)
    template = job["spec"]["template"]
    container = template["spec"]["containers"][0]
    config_dir = workdir / "config"
    secret_dir = workdir / "s3"
    config_dir.mkdir(parents=True, exist_ok=True)
    secret_dir.mkdir(parents=True, exist_ok=True)
    cm_name = _volume_source(template, contract.CONFIG_DIR)["configMap"]["name"]
    for key, value in (core.read_namespaced_config_map(cm_name, namespace).data or {}).items():
        (config_dir / key).write_text(value)
    secret_name = _volume_source(template, contract.S3_SECRET_DIR)["secret"]["secretName"]
    import base64

    secret = core.read_namespaced_secret(secret_name, namespace)
    for key, value in (secret.data or {}).items():
        path = secret_dir / key
        path.write_bytes(base64.b64decode(value))
        path.chmod(0o600)
    env = {e["name"]: e.get("value", "") for e in container.get("env") or []}
    env[contract.ENV_CONFIG] = str(config_dir / contract.CONFIG_FILE)
    env[contract.ENV_S3_SECRET_DIR] = str(secret_dir)
    # Several local runs must not fight over :9090: each gets its own port, or none (0).
    env[contract.ENV_METRICS_PORT] = str(metrics_port)
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    return argv, env


def run_pod_as_process(
    api: Any,
    namespace: str,
    job: dict[str, Any],
    workdir: Path,
    log_path: Path,
    metrics_port: int = 0,
) -> subprocess.Popen[bytes]:
    """Start the Job's trainer as a local process, its output going to ``log_path``."""
    argv, env = pod_process_args(api, namespace, job, workdir, metrics_port)
    log = log_path.open("ab")
    return subprocess.Popen(
        argv,
        env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
