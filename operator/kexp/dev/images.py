"""Container images for the real node, built without a registry or a container engine.

An image here is an OCI image layout in a tar archive (``oci-layout``, ``index.json`` and
``blobs/sha256/...``), the format ``ctr images import`` reads. Layers are plain, uncompressed
tars written with :mod:`tarfile`: the images never leave this machine, and gzip would cost
more time than the bytes it saves on a local disk. Files are owned by root in the layers
whatever their owner on the host, and modification times are fixed, so the same inputs give
the same digests and a cached archive is recognised by its digest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import stat
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from kexp.dev import toolchain
from kexp.render.settings import DEFAULT_TRAINER_IMAGE, TRAINER_UID

if TYPE_CHECKING:
    from kexp.dev.realnode import RealNode

Log = Callable[[str], None]


class ImageError(RuntimeError):
    """An image could not be built or imported; the message says which step failed."""


#: The sandbox image's version: the one kubeadm 1.34 pins, built from the same source.
PAUSE_VERSION: Final = "3.10.1"
PAUSE_IMAGE: Final = f"kexp.local/pause:{PAUSE_VERSION}"
#: The trainer image as built here; it is also tagged as the operator's default image, so an
#: operator started without KEXP_TRAINER_IMAGE finds it on the node and never pulls.
TRAINER_IMAGE: Final = "kexp.local/trainer:dev"
DEBIAN_SUITE: Final = "bookworm"
DEBIAN_MIRROR: Final = "http://deb.debian.org/debian"
BASE_PACKAGES: Final = ("python3.11", "ca-certificates")
VENV: Final = "/opt/kexp"
SITE_DIR: Final = f"{VENV}/lib/python3.11/site-packages"
#: Left out of the trainer image: only torch.compile uses Triton (1 GB).
SITE_EXCLUDES: Final = ("triton",)

#: Every file in a layer gets this mtime: reproducible digests, and 1980 keeps zip-based
#: tooling that rejects earlier dates happy.
EPOCH: Final = 315532800

LAYER_MEDIA_TYPE: Final = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE: Final = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE: Final = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE: Final = "application/vnd.oci.image.index.v1+json"

#: (path in the image, path on this machine or None for a directory to create)
Entry = tuple[str, Path | None]


@dataclass
class Layer:
    """One layer tar on disk with its digest (uncompressed, so digest and diff id agree)."""

    path: Path
    digest: str
    size: int


@dataclass
class ImageConfig:
    """The parts of an OCI image config the node's runtime reads."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    user: str = ""
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self, diff_ids: list[str]) -> dict[str, Any]:
        config: dict[str, Any] = {
            "Env": self.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        }
        if self.entrypoint:
            config["Entrypoint"] = self.entrypoint
        if self.cmd:
            config["Cmd"] = self.cmd
        if self.user:
            config["User"] = self.user
        if self.working_dir:
            config["WorkingDir"] = self.working_dir
        if self.labels:
            config["Labels"] = self.labels
        return {
            "architecture": "amd64",
            "os": "linux",
            "created": "1980-01-01T00:00:00Z",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = EPOCH
    return info


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(_normalise(info))


def _walk(root: Path, exclude: Callable[[Path], bool]) -> Iterable[Path]:
    """Every path under ``root`` in sorted order (so layer digests are stable)."""
    yield root
    if root.is_dir() and not root.is_symlink():
        for child in sorted(root.iterdir()):
            if exclude(child):
                continue
            yield from _walk(child, exclude)


def write_layer(
    dest: Path,
    entries: Iterable[Entry],
    *,
    exclude: Callable[[Path], bool] = lambda _p: False,
) -> Layer:
    """Write a layer tar of ``entries``: each host path is copied in recursively at its image
    path (symlinks kept as links); ``None`` makes an empty directory. Parent directories are
    created 0755, so a path like ``/root/...`` stays readable for a non-root user."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".layer.", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    seen: set[str] = set()
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for image_path, host_path in entries:
                rel = image_path.strip("/")
                parts = rel.split("/")
                for i in range(1, len(parts)):
                    parent = "/".join(parts[:i])
                    if parent not in seen:
                        seen.add(parent)
                        _add_dir(tar, parent)
                if host_path is None:
                    if rel not in seen:
                        seen.add(rel)
                        _add_dir(tar, rel, 0o1777 if rel == "tmp" else 0o755)
                    continue
                for path in _walk(host_path, exclude):
                    name = rel if path == host_path else f"{rel}/{path.relative_to(host_path)}"
                    if name in seen:
                        continue
                    seen.add(name)
                    info = tar.gettarinfo(str(path), arcname=name)
                    _normalise(info)
                    if info.isdir() or (info.isreg() and stat.S_IMODE(info.mode) & 0o100):
                        info.mode |= 0o755
                    elif info.isreg():
                        info.mode |= 0o644
                    if info.isreg():
                        with path.open("rb") as fh:
                            tar.addfile(info, fh)
                    else:
                        tar.addfile(info)
        digest = _sha256_file(tmp)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return Layer(dest, digest, dest.stat().st_size)


def write_layer_from_files(
    dest: Path, files: dict[str, bytes], symlinks: dict[str, str] | None = None
) -> Layer:
    """A small layer of generated files (mode 0644) and symbolic links (name → target)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name, data in sorted(files.items()):
            parts = name.strip("/").split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in dirs:
                    dirs.add(parent)
                    _add_dir(tar, parent)
            info = _normalise(tarfile.TarInfo("/".join(parts)))
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in sorted((symlinks or {}).items()):
            info = _normalise(tarfile.TarInfo(name.strip("/")))
            info.type = tarfile.SYMTYPE
            info.linkname = target
            info.mode = 0o777
            tar.addfile(info)
    dest.write_bytes(buf.getvalue())
    return Layer(dest, "sha256:" + hashlib.sha256(buf.getvalue()).hexdigest(), len(buf.getvalue()))


def _json_blob(obj: dict[str, Any]) -> tuple[bytes, str]:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _normalise(tarfile.TarInfo(name))
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


@dataclass
class Image:
    """An image ready to import: its layers on disk, config and manifest."""

    refs: list[str]
    layers: list[Layer]
    config: ImageConfig

    def blobs(self) -> tuple[bytes, str, bytes, str]:
        """Config JSON and digest, manifest JSON and digest (pure: same inputs, same bytes)."""
        config_data, config_digest = _json_blob(
            self.config.to_json([layer.digest for layer in self.layers])
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": config_digest,
                "size": len(config_data),
            },
            "layers": [
                {"mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size}
                for layer in self.layers
            ],
        }
        manifest_data, manifest_digest = _json_blob(manifest)
        return config_data, config_digest, manifest_data, manifest_digest

    @property
    def digest(self) -> str:
        return self.blobs()[3]

    def write_archive(self, out: IO[bytes], skip: frozenset[str] = frozenset()) -> None:
        """Write the image as an OCI layout tar (one index entry per name) to a stream.

        Layers whose digest is in ``skip`` are left out: containerd, which already holds
        them, unpacks from its content store and does not ask for them in the archive.
        """
        config_data, config_digest, manifest_data, manifest_digest = self.blobs()
        index = {
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [
                {
                    "mediaType": MANIFEST_MEDIA_TYPE,
                    "digest": manifest_digest,
                    "size": len(manifest_data),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    # containerd names the imported image after this annotation.
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
                    },
                }
                for ref in self.refs
            ],
        }
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            _add_bytes(tar, "index.json", json.dumps(index).encode())
            _add_dir(tar, "blobs")
            _add_dir(tar, "blobs/sha256")
            _add_bytes(tar, f"blobs/sha256/{config_digest[7:]}", config_data)
            _add_bytes(tar, f"blobs/sha256/{manifest_digest[7:]}", manifest_data)
            for layer in self.layers:
                if layer.digest in skip:
                    continue
                info = _normalise(tarfile.TarInfo(f"blobs/sha256/{layer.digest[7:]}"))
                info.size = layer.size
                info.mode = 0o644
                with layer.path.open("rb") as fh:
                    tar.addfile(info, fh)


def images_dir() -> Path:
    return toolchain.cache_dir() / "images"


def _cached_layer(path: Path, build: Callable[[Path], Layer]) -> Layer:
    """A layer tar kept in the cache with its digest beside it, built once."""
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        data = json.loads(meta.read_text())
        if data.get("size") == path.stat().st_size:
            return Layer(path, str(data["digest"]), int(data["size"]))
    layer = build(path)
    meta.write_text(json.dumps({"digest": layer.digest, "size": layer.size}))
    return layer


# ---- the pause image -------------------------------------------------------------------------


def _kubernetes_source() -> Path:
    """Where the Go module cache holds k8s.io/kubernetes at the kubelet's pinned version."""
    tool = next(t for t in toolchain.GO_TOOLS if t.name == "kubelet")
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{tool.module}@{tool.version}"],
        cwd=tool.module_dir,
        env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ImageError(f"go mod download {tool.module}@{tool.version} failed: {proc.stdout}")
    return Path(json.loads(proc.stdout)["Dir"])


def pause_image() -> Image:
    """The sandbox ("pause") image: upstream's build/pause/linux/pause.c, linked statically."""

    def build(dest: Path) -> Layer:
        source = _kubernetes_source() / "build" / "pause" / "linux" / "pause.c"
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "pause"
            proc = subprocess.run(
                [
                    "gcc",
                    "-Os",
                    "-Wall",
                    "-Werror",
                    "-static",
                    f"-DVERSION=v{PAUSE_VERSION}-kexp",
                    "-o",
                    str(binary),
                    str(source),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise ImageError(f"compiling {source} failed:\n{proc.stderr[-2000:]}")
            subprocess.run(["strip", str(binary)], capture_output=True, check=False)
            return write_layer(dest, [("/pause", binary)])

    layer = _cached_layer(images_dir() / f"pause-{PAUSE_VERSION}.layer", build)
    config = ImageConfig(entrypoint=["/pause"], user="65535:65535")
    return Image([PAUSE_IMAGE], [layer], config)


# ---- the trainer image -----------------------------------------------------------------------


def _debootstrap_rootfs(dest: Path, log: Log) -> Layer:
    """Debian bookworm (minbase) with Python 3.11, as a layer; the user kexp is uid 1000."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap {DEBIAN_SUITE} with {', '.join(BASE_PACKAGES)} (once; cached) ...")
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ImageError(f"debootstrap failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        # As the Dockerfile's `useradd --uid 1000`: the pod runs as 1000 and HOME is /tmp.
        with (rootfs / "etc/passwd").open("a") as fh:
            fh.write(f"kexp:x:{TRAINER_UID}:{TRAINER_UID}::/tmp:/usr/sbin/nologin\n")
        with (rootfs / "etc/group").open("a") as fh:
            fh.write(f"kexp:x:{TRAINER_UID}:\n")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / cache).glob("*"):
                if path.is_file():
                    path.unlink()
        return write_layer(dest, [("/", rootfs)], exclude=lambda p: p.name in ("proc", "sys"))


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _excluded_from_site(path: Path) -> bool:
    name = path.name
    if path.parent == _site_packages():
        if name in SITE_EXCLUDES or name.startswith("__editable__"):
            return True
        # This project comes in its own (small, often rebuilt) layer.
        if name in ("kexp", "kexp_trainers") or (
            name.startswith("kexp-") and name.endswith(".dist-info")
        ):
            return True
    return False


def _site_key() -> str:
    """What the site-packages layer depends on: every installed distribution and version."""
    site = _site_packages()
    names = sorted(p.name for p in site.glob("*.dist-info"))
    data = "\n".join([sys.version, *SITE_EXCLUDES, *names]).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImageError(f"package {name} is not installed here; `pip install -e .[trainers]`")
    return Path(spec.origin).parent


def trainer_image(log: Log = lambda _m: None) -> Image:
    """kexp's trainer image, the equivalent of images/trainer.Dockerfile without a registry.

    Layers: Debian bookworm with its Python 3.11 (debootstrap, cached), this environment's
    site-packages as a virtualenv in /opt/kexp (cached until a distribution changes), and
    this checkout's kexp and kexp_trainers packages. Torch is whatever this environment has
    (PyPI's, with its CUDA libraries: the CPU wheels of the Dockerfile are not on PyPI);
    Triton, which only torch.compile uses, is left out.
    """
    cache = images_dir()
    cache.mkdir(parents=True, exist_ok=True)
    base = _cached_layer(
        cache / f"base-{DEBIAN_SUITE}-{'-'.join(BASE_PACKAGES)}.layer",
        lambda dest: _debootstrap_rootfs(dest, log),
    )

    def build_site(dest: Path) -> Layer:
        log(f"packing {_site_packages()} into the trainer image (once per environment) ...")
        for old in cache.glob("site-*.layer"):
            old.unlink()
        return write_layer(dest, [(SITE_DIR, _site_packages())], exclude=_excluded_from_site)

    site = _cached_layer(cache / f"site-{_site_key()}.layer", build_site)
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    venv = write_layer_from_files(
        cache / "venv.layer",
        {
            f"{VENV}/pyvenv.cfg": (
                f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {pyver}\n"
            ).encode(),
        },
        {f"{VENV}/bin/python": "/usr/bin/python3.11", f"{VENV}/bin/python3": "python"},
    )
    project = write_layer(
        cache / "project.layer",
        [(f"{SITE_DIR}/{name}", _package_dir(name)) for name in ("kexp", "kexp_trainers")],
        exclude=lambda p: p.name == "__pycache__" or p.name == "gotools",
    )
    config = ImageConfig(
        entrypoint=["python", "-m", "kexp_trainers.run"],
        env=[
            f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"VIRTUAL_ENV={VENV}",
            "PYTHONDONTWRITEBYTECODE=1",
            "PYTHONUNBUFFERED=1",
            "HOME=/tmp",
            "XDG_CACHE_HOME=/tmp/.cache",
            "MPLCONFIGDIR=/tmp/.matplotlib",
        ],
        user=f"{TRAINER_UID}:{TRAINER_UID}",
        working_dir="/tmp",  # noqa: S108 - the pod mounts an emptyDir there
        labels={
            "org.opencontainers.image.title": "kexp-trainer",
            "io.kexp.build": "kexp dev (images.py)",
        },
    )
    return Image([TRAINER_IMAGE, DEFAULT_TRAINER_IMAGE], [base, site, venv, project], config)


# ---- importing -------------------------------------------------------------------------------


def import_image(node: RealNode, image: Image) -> bool:
    """Import ``image`` into the node's containerd unless every name already has its digest.

    The archive is streamed to ``ctr images import -``: the layers are read once, from the
    cache, and no second copy of a multi-GB archive is written. Returns whether it imported.
    """
    digest = image.digest
    present = node.image_refs()
    if all(present.get(ref) == digest for ref in image.refs):
        return False
    # A changed checkout changes only the small project layer: the GBs below it are in the
    # content store already, and streaming them again would take minutes.
    skip = frozenset(layer.digest for layer in image.layers if node.has_blob(layer.digest))
    argv = ["ctr", "-a", str(node.containerd_socket), "-n", "k8s.io", "images", "import", "-"]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=err, stderr=err)
        assert proc.stdin is not None
        try:
            image.write_archive(proc.stdin, skip)
        except BrokenPipeError:
            pass
        finally:
            proc.stdin.close()
        code = proc.wait()
        err.seek(0)
        output = err.read().decode(errors="replace")
    if code != 0:
        raise ImageError(f"ctr images import {image.refs[0]} failed:\n{output[-2000:]}")
    present = node.image_refs()
    missing = [ref for ref in image.refs if present.get(ref) != digest]
    if missing:
        raise ImageError(f"after import, containerd lacks {missing} at {digest}:\n{output}")
    return True


def ensure_node_images(node: RealNode, *, trainer: bool, log: Log) -> dict[str, str]:
    """The pause image, and (unless ``trainer`` is false) the trainer's, in the node's
    containerd. Returns each name with how long it took ("present" when already there)."""
    report: dict[str, str] = {}
    wanted = [pause_image()]
    if trainer:
        started = time.monotonic()
        wanted.append(trainer_image(log))
        report["trainer build"] = f"{time.monotonic() - started:.1f}s"
    for image in wanted:
        started = time.monotonic()
        if import_image(node, image):
            report[image.refs[0]] = f"imported in {time.monotonic() - started:.1f}s"
            log(f"imported {image.refs[0]} ({report[image.refs[0]][12:]})")
        else:
            report[image.refs[0]] = "present"
    return report
