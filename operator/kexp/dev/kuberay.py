"""KubeRay's CRDs for the local stack, fetched through the Go module proxy and cached.

A sweep with ``spec.sweep.rayCluster`` becomes a KubeRay ``RayJob``; the API server accepts one
only when KubeRay's CRDs are installed. They are pinned like the Go tools
(``gotools/kuberay/go.mod`` and ``go.sum``): ``go mod download`` fetches the ray-operator module
at that version into Go's module cache and checks it against go.sum, and the CRDs are copied
from its ``config/crd/bases/`` into ``<cache>/kuberay/<version>-<digest>/``. Nothing is built,
and nothing is read from release pages.

Only the CRDs are installed: the local stack's kwok nodes run no containers, so a KubeRay
operator would have nothing to start. The RayJob is rendered, validated and stored by the real
API server, which is what the tests check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Final

import yaml

from kexp.dev.toolchain import GOTOOLS_DIR, ToolError, _tail, cache_dir, go_mod_version
from kexp.kube.crds import apply_crds

MODULE: Final = "github.com/ray-project/kuberay/ray-operator"
PIN_DIR: Final = GOTOOLS_DIR / "kuberay"
CRD_DIR_IN_MODULE: Final = "config/crd/bases"
#: The CRDs kexp needs: RayJob (what a sweep creates) and RayCluster (what a RayJob makes).
CRD_FILES: Final = ("ray.io_rayjobs.yaml", "ray.io_rayclusters.yaml")


def kuberay_version() -> str:
    """The pinned KubeRay version (from gotools/kuberay/go.mod)."""
    return go_mod_version((PIN_DIR / "go.mod").read_text(), MODULE)


def crds_cache_dir(root: Path | None = None) -> Path:
    """Where the pinned CRDs are kept; the go.sum digest guards against a changed pin."""
    digest = hashlib.sha256((PIN_DIR / "go.sum").read_bytes()).hexdigest()[:8]
    return (root or cache_dir()) / "kuberay" / f"{kuberay_version()}-{digest}"


def _download_module() -> Path:
    """``go mod download`` the pinned module (verified against go.sum); its directory."""
    go = shutil.which("go")
    if go is None:
        raise ToolError("cannot fetch KubeRay's CRDs: the Go toolchain ('go') is not on PATH")
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"}
    target = f"{MODULE}@{kuberay_version()}"
    proc = subprocess.run(
        [go, "mod", "download", "-json", target],
        cwd=PIN_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        info: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        detail = info.get("Error") or _tail(proc.stderr + proc.stdout)
        raise ToolError(f"go mod download {target} failed (exit {proc.returncode}): {detail}")
    return Path(str(info["Dir"]))


def ensure_kuberay_crds(root: Path | None = None) -> Path:
    """The directory holding the pinned CRD files, fetching them on first use."""
    dest = crds_cache_dir(root)
    if all((dest / name).is_file() for name in CRD_FILES):
        return dest
    source = _download_module() / CRD_DIR_IN_MODULE
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".kuberay-", dir=dest.parent))
    try:
        for name in CRD_FILES:
            if not (source / name).is_file():
                raise ToolError(f"{MODULE}@{kuberay_version()} has no {CRD_DIR_IN_MODULE}/{name}")
            shutil.copyfile(source / name, tmp / name)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)  # atomic: a concurrent reader sees all files or none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_kuberay_crds(root: Path | None = None) -> list[dict[str, Any]]:
    """The pinned CRDs as objects (RayJob first)."""
    directory = ensure_kuberay_crds(root)
    docs: list[dict[str, Any]] = []
    for name in CRD_FILES:
        docs += [d for d in yaml.safe_load_all((directory / name).read_text()) if d]
    return [d for d in docs if d.get("kind") == "CustomResourceDefinition"]


def install_kuberay_crds(api: Any, root: Path | None = None, timeout_s: float = 120.0) -> None:
    """Install (or update) KubeRay's CRDs on the cluster ``api`` talks to; wait until served."""
    apply_crds(api, load_kuberay_crds(root), timeout_s=timeout_s)
