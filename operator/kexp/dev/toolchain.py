"""The tools the local stack runs, built or installed from the package registries and cached.

Every Go tool is pinned by a small go.mod (and go.sum) under ``kexp/dev/gotools/<dir>/``; the
version that keys the cache is read from that go.mod, so the pin exists in exactly one place.
Prometheus and promtool come from Debian's packages. Nothing is downloaded from release pages.

Built binaries land in ``<cache>/bin/<name>-<version>`` (atomically, via a temporary file), so
a second ``ensure_tools()`` finds them and returns in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

GOTOOLS_DIR: Final = Path(__file__).parent / "gotools"

#: Debian's prometheus package in bookworm; the upstream version that ``prometheus --version``
#: must report. A different one is refused rather than silently used.
PROMETHEUS_VERSION: Final = "2.42.0"
#: Debian bookworm's containerd and runc, which the real node runs pods with.
CONTAINERD_VERSION: Final = "1.6.20"
RUNC_VERSION: Final = "1.1.5"


class ToolError(RuntimeError):
    """A tool could not be built, installed or found; the message says which and what to do."""


def cache_dir() -> Path:
    """Where built tools are kept across runs: ``$KEXP_CACHE_DIR`` or ``~/.cache/kexp``."""
    explicit = os.environ.get("KEXP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kexp"


def go_mod_version(go_mod_text: str, module: str) -> str:
    """Return the version that a go.mod requires for ``module``.

    Raises ToolError when the module is not required, so a broken pin is named, not guessed.
    """
    pattern = re.compile(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", re.MULTILINE)
    match = pattern.search(go_mod_text)
    if match is None:
        raise ToolError(f"go.mod does not require {module}")
    return match.group(1)


def _kube_ldflags(version: str) -> list[str]:
    """Version stamps the Kubernetes build scripts set; without them servers report v0.0.0."""
    major, minor = version.lstrip("v").split(".")[:2]
    pkgs = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    flags = ["-s", "-w"]
    for pkg in pkgs:
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return flags


@dataclass(frozen=True)
class GoTool:
    """A binary built with ``go build`` from a package of a pinned module."""

    name: str
    gotools_dir: str
    module: str
    package: str
    kube_version_stamp: bool = False
    env: tuple[tuple[str, str], ...] = ()

    @property
    def module_dir(self) -> Path:
        return GOTOOLS_DIR / self.gotools_dir

    @property
    def version(self) -> str:
        return go_mod_version((self.module_dir / "go.mod").read_text(), self.module)

    def cached_path(self, root: Path | None = None) -> Path:
        """The binary's place in the cache; the go.sum digest guards against a changed pin."""
        digest = hashlib.sha256((self.module_dir / "go.sum").read_bytes()).hexdigest()[:8]
        return (root or cache_dir()) / "bin" / f"{self.name}-{self.version}-{digest}"

    def ldflags(self) -> list[str]:
        if self.kube_version_stamp:
            return _kube_ldflags(self.version)
        return ["-s", "-w"]


@dataclass(frozen=True)
class DebianTool:
    """A binary shipped by a Debian package and checked for its upstream version."""

    name: str
    package: str
    path: Path
    version_prefix: str
    version_args: tuple[str, ...] = ("--version",)
    #: How the version appears in the tool's output; ``{}`` stands for ``version_prefix``.
    version_format: str = "version {}"


KUBERNETES: Final = "k8s.io/kubernetes"

GO_TOOLS: Final[tuple[GoTool, ...]] = (
    GoTool("etcd", "kubernetes", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3"),
    *(
        GoTool(name, "kubernetes", KUBERNETES, f"k8s.io/kubernetes/cmd/{name}", True)
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    ),
    GoTool("kwok", "kwok", "sigs.k8s.io/kwok", "sigs.k8s.io/kwok/cmd/kwok"),
    GoTool("minio", "minio", "github.com/minio/minio", "github.com/minio/minio"),
    GoTool("helm", "helm", "helm.sh/helm/v3", "helm.sh/helm/v3/cmd/helm"),
    # Only the real node (`kexp dev up --real-node`) needs it; see NODE_TOOL_NAMES.
    GoTool("kubelet", "kubelet", KUBERNETES, "k8s.io/kubernetes/cmd/kubelet", True),
)

DEBIAN_TOOLS: Final[tuple[DebianTool, ...]] = (
    DebianTool("prometheus", "prometheus", Path("/usr/bin/prometheus"), PROMETHEUS_VERSION),
    DebianTool(
        "promtool", "prometheus", Path("/usr/bin/promtool"), PROMETHEUS_VERSION, ("--version",)
    ),
    DebianTool(
        "containerd",
        "containerd",
        Path("/usr/bin/containerd"),
        CONTAINERD_VERSION,
        version_format="github.com/containerd/containerd {}",
    ),
    DebianTool("runc", "runc", Path("/usr/sbin/runc"), RUNC_VERSION),
)

ALL_TOOL_NAMES: Final = tuple(t.name for t in GO_TOOLS) + tuple(t.name for t in DEBIAN_TOOLS)
#: The real node's tools: a kubelet, and Debian's containerd and runc (bookworm's; the
#: kubelet speaks CRI v1, which containerd 1.6 serves). A stack without a real node never
#: builds or installs them, so they are not in the default set of ``ensure_tools``.
NODE_TOOL_NAMES: Final = ("kubelet", "containerd", "runc")
STACK_TOOL_NAMES: Final = tuple(n for n in ALL_TOOL_NAMES if n not in NODE_TOOL_NAMES)


@dataclass
class InstallReport:
    """What ``ensure_tools`` did for each tool, with seconds spent (0 for a cache hit)."""

    paths: dict[str, Path] = field(default_factory=dict)
    built: dict[str, float] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.paths[name]


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def build_go_tool(tool: GoTool, dest: Path) -> None:
    """Build one Go tool into ``dest`` (atomically). Raises ToolError naming module@version."""
    go = shutil.which("go")
    if go is None:
        raise ToolError(
            f"cannot build {tool.name}: the Go toolchain ('go') is not on PATH; install Go 1.24+"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # A go.mod asking for a newer Go must not trigger a toolchain download: fail clearly instead.
    env.update({"CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"})
    env.update(dict(tool.env))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{tool.name}.", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [
        go,
        "build",
        "-trimpath",
        "-ldflags",
        " ".join(tool.ldflags()),
        "-o",
        str(tmp),
        tool.package,
    ]
    try:
        proc = subprocess.run(
            cmd, cwd=tool.module_dir, env=env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise ToolError(
                f"building {tool.name} from {tool.module}@{tool.version} failed "
                f"(go build {tool.package}, exit {proc.returncode}):\n"
                f"{_tail(proc.stderr + proc.stdout)}"
            )
        tmp.chmod(0o755)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def _apt_install(package: str) -> None:
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise ToolError(
            f"{package} is missing; install Debian's package: sudo apt-get install {package}"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [apt, "install", "-y", "-q", "--no-install-recommends", package]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        # A fresh machine may have empty package lists: refresh once and retry.
        subprocess.run([apt, "update", "-q"], env=env, capture_output=True, check=False)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolError(f"apt-get install {package} failed:\n{_tail(proc.stderr + proc.stdout)}")


def ensure_debian_tool(tool: DebianTool) -> Path:
    """Install the tool's package if absent, then check it reports the pinned version."""
    if not tool.path.exists():
        _apt_install(tool.package)
    if not tool.path.exists():
        raise ToolError(f"{tool.path} is still missing after installing {tool.package}")
    out = subprocess.run(
        [str(tool.path), *tool.version_args], capture_output=True, text=True, check=False
    )
    text = out.stdout + out.stderr
    if tool.version_format.format(tool.version_prefix) not in text:
        raise ToolError(
            f"{tool.path} is not version {tool.version_prefix} (it says: {_tail(text, 1)}); "
            f"kexp is tested with Debian's {tool.package} {tool.version_prefix}"
        )
    return tool.path


def ensure_tools(
    names: Iterable[str] | None = None,
    *,
    root: Path | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> InstallReport:
    """Make every named tool (the stack's by default) available and return their paths.

    Cached binaries are reused; missing ones are built (Go) or installed (Debian). Failures
    raise ToolError with the module and version that failed.
    """
    wanted = set(names) if names is not None else set(STACK_TOOL_NAMES)
    unknown = wanted - set(ALL_TOOL_NAMES)
    if unknown:
        raise ToolError(f"unknown tool(s) {sorted(unknown)}; known: {', '.join(ALL_TOOL_NAMES)}")
    report = InstallReport()
    for tool in GO_TOOLS:
        if tool.name not in wanted:
            continue
        dest = tool.cached_path(root)
        if not dest.exists():
            log(f"building {tool.name} {tool.version} (cold builds take minutes) ...")
            started = time.monotonic()
            build_go_tool(tool, dest)
            report.built[tool.name] = time.monotonic() - started
            log(f"built {tool.name} in {report.built[tool.name]:.0f}s")
        report.paths[tool.name] = dest
    for deb in DEBIAN_TOOLS:
        if deb.name in wanted:
            report.paths[deb.name] = ensure_debian_tool(deb)
    return report


def tool_versions() -> dict[str, str]:
    """The pinned version of every tool, for ``kexp dev status`` and the docs."""
    versions = {t.name: t.version for t in GO_TOOLS}
    versions.update({d.name: d.version_prefix for d in DEBIAN_TOOLS})
    return versions
