"""The Dockerfiles in images/, checked without a Docker engine (there is none on this machine).

Each Dockerfile is read with BuildKit's own parser (PyPI ``dockerfile``, a binding of the Go
parser), and what an engine would need is checked: pinned, ARG-driven base images, a builder
stage whose wheel the runtime stage installs, OCI labels from build args, a non-root final user
(uid 1000 for trainers, as the operator renders pods), COPY sources that exist and that
.dockerignore lets into the context. Then the builder stage's step is run for real on exactly
the files the context would hold (``pip wheel`` of the project), and the entry points the
images call are started from that wheel.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest
import yaml

from kexp.render.settings import DEFAULT_TRAINER_COMMAND, TRAINER_UID

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
FILES = {
    "operator": IMAGES / "operator.Dockerfile",
    "trainer": IMAGES / "trainer.Dockerfile",
    "trainer-cuda": IMAGES / "trainer-cuda.Dockerfile",
}
TRAINERS = ("trainer", "trainer-cuda")


@dataclass
class Stage:
    name: str
    base: str
    commands: list[dockerfile.Command] = field(default_factory=list)

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd]

    def args(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for c in self.all("ARG"):
            for item in c.value:
                key, _, default = item.partition("=")
                out[key] = default if "=" in item else None
        return out

    def labels(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for c in self.all("LABEL"):
            values = list(c.value)
            for key, value in zip(values[::2], values[1::2], strict=True):
                out[key] = value.strip('"')
        return out


@dataclass
class Parsed:
    global_args: dict[str, str | None]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(path: Path) -> Parsed:
    commands = dockerfile.parse_file(str(path))
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for c in commands:
        if c.cmd == "FROM":
            values = list(c.value)
            name = values[2] if len(values) == 3 and values[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, values[0]))
        elif not stages:
            assert c.cmd == "ARG", f"{path.name}: only ARG may come before the first FROM"
            for item in c.value:
                key, _, default = item.partition("=")
                global_args[key] = default if "=" in item else None
        else:
            stages[-1].commands.append(c)
    return Parsed(global_args, stages)


PARSED = {name: parse(path) for name, path in FILES.items()}


# ---- base images ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FILES))
def test_every_from_is_an_arg_pinned_tag_never_latest(name: str) -> None:
    parsed = PARSED[name]
    stage_names = set()
    for stage in parsed.stages:
        if stage.base in stage_names:
            continue  # FROM an earlier stage
        ref = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", stage.base)
        assert ref, f"{name}: FROM {stage.base} must be a global ARG, so it can be pinned per build"
        image = parsed.global_args.get(ref.group(1) or ref.group(2))
        assert image, f"{name}: FROM {stage.base}: the ARG needs a default image"
        repo, _, tag = image.split("@")[0].rpartition(":")
        assert repo, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        # a tag with a version in it, not a moving name like "slim"
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"
        stage_names.add(stage.name)
    text = FILES[name].read_text()
    assert not re.search(r":latest\b", text), f"{name} mentions a :latest tag"
    assert "digest" in text.lower(), f"{name} should say how to pin the base image's digest"


@pytest.mark.parametrize("name", sorted(FILES))
def test_multi_stage_the_builder_makes_a_wheel_the_runtime_installs(name: str) -> None:
    parsed = PARSED[name]
    assert len(parsed.stages) >= 2
    builder, final = parsed.stages[0], parsed.final
    assert builder.name == "builder"
    assert any("pip wheel" in " ".join(c.value) for c in builder.all("RUN"))
    # The runtime stage takes the wheel from the builder (a bind mount, or a COPY --from).
    from_builder = [c for c in final.commands if any("from=builder" in f for f in c.flags)]
    assert from_builder, f"{name}: the runtime stage must install the builder's wheel"
    installs = " ".join(
        " ".join(c.value) for c in final.all("RUN") if "pip install" in " ".join(c.value)
    )
    assert "/dist/kexp-*.whl" in installs
    if name in TRAINERS:
        # torch, gymnasium, highway-env; Ray Tune for sweeps (the same image runs them)
        assert "[trainers,tune]" in installs
    else:
        assert "[trainers" not in installs  # no torch in the operator image


@pytest.mark.parametrize("name", sorted(FILES))
def test_final_stage_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = PARSED[name].final.all("USER")
    assert users, f"{name}: the final stage sets no USER (it would run as root)"
    user = users[-1].value[0]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"{name}: USER {user}: numeric, so runAsNonRoot can check it"
    assert int(uid) != 0
    if gid:
        assert gid.isdigit()
        assert int(gid) != 0
    if name in TRAINERS:
        assert int(uid) == TRAINER_UID, "the operator renders trainer pods with this runAsUser"
        assert int(gid) == TRAINER_UID


@pytest.mark.parametrize("name", sorted(FILES))
def test_oci_labels_carry_version_and_commit_from_build_args(name: str) -> None:
    final = PARSED[name].final
    labels = final.labels()
    args = final.args()
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.revision"] == "${GIT_COMMIT}"
    # A LABEL sees only ARGs declared in its own stage.
    assert "VERSION" in args
    assert "GIT_COMMIT" in args
    for key in ("title", "source", "licenses", "description"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert (
        labels["org.opencontainers.image.licenses"]
        == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
    )


@pytest.mark.parametrize("name", sorted(FILES))
def test_entrypoints_are_the_ones_kexp_installs(name: str) -> None:
    final = PARSED[name].final
    entry = final.all("ENTRYPOINT")[-1]
    assert entry.json, "exec form, so signals reach the process (graceful shutdown on SIGTERM)"
    if name == "operator":
        assert list(entry.value) == ["kexp-operator"]
        scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts["kexp-operator"] == "kexp.handlers.run:main"
    else:
        # What the operator renders as the container's command for kexp's own trainer.
        assert tuple(entry.value) == DEFAULT_TRAINER_COMMAND


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_images_take_torch_from_the_right_index(name: str) -> None:
    args = PARSED[name].final.args()
    index = args["TORCH_INDEX_URL"] or ""
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"] or "")
    if name == "trainer":
        assert index.endswith("/cpu")
    else:
        assert re.search(r"/cu\d+$", index)
        env = " ".join(" ".join(c.value) for c in PARSED[name].final.all("ENV"))
        assert "NVIDIA_VISIBLE_DEVICES" in env
        assert "NVIDIA_DRIVER_CAPABILITIES" in env
    runs = [" ".join(c.value) for c in PARSED[name].final.all("RUN")]
    torch_run = next(r for r in runs if "torch==" in r)
    kexp_run = next(r for r in runs if "[trainers,tune]" in r)
    # torch first: installing kexp[trainers] first would pull PyPI's default (CUDA) torch.
    assert runs.index(torch_run) < runs.index(kexp_run)
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_run


# ---- the build context -------------------------------------------------------------------------
def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (negated, regex) in order; Docker's matching: the last match wins, and
    a pattern that matches a parent directory matches everything under it."""
    out = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        out.append((negated, re.compile(regex)))
    return out


def in_context(rel: str) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, regex in _dockerignore_patterns():
        if any(regex.fullmatch(p) for p in prefixes):
            included = negated
    return included


def test_dockerignore_keeps_the_context_to_what_the_images_need() -> None:
    assert in_context("pyproject.toml")
    assert in_context("operator/kexp/api/contract.py")
    assert in_context("trainers/kexp_trainers/run.py")
    for out in (
        ".git/HEAD",
        ".venv/bin/python",
        "tests/conftest.py",
        "operator/kexp/__pycache__/x.pyc",
    ):
        assert not in_context(out), out


@pytest.mark.parametrize("name", sorted(FILES))
def test_copy_sources_exist_and_are_in_the_context(name: str) -> None:
    for stage in PARSED[name].stages:
        for c in stage.all("COPY") + stage.all("ADD"):
            if any(f.startswith("--from=") for f in c.flags):
                continue
            sources = list(c.value[:-1])
            assert sources, c.original
            for src in sources:
                assert not src.startswith(("http://", "https://")), c.original
                path = REPO / src
                assert path.exists(), f"{name}: COPY {src}: not in the repository"
                assert in_context(src.rstrip("/")), f"{name}: COPY {src}: .dockerignore excludes it"


def _context_files() -> list[Path]:
    """The files the builder stage copies, after .dockerignore: what `docker build` sends."""
    sources = {
        src.rstrip("/")
        for c in PARSED["operator"].stages[0].all("COPY")
        for src in list(c.value[:-1])
    }
    files = []
    for src in sorted(sources):
        path = REPO / src
        candidates = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files += [p for p in candidates if in_context(p.relative_to(REPO).as_posix())]
    return files


def test_the_builders_copies_are_the_same_in_every_image() -> None:
    copies = {
        name: [c.original for c in parsed.stages[0].commands if c.cmd in ("COPY", "RUN")]
        for name, parsed in PARSED.items()
    }
    assert copies["trainer"] == copies["operator"] == copies["trainer-cuda"]


# ---- what the images run ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder stage, done here: `pip wheel` of the context's files, installed on its own.

    setuptools comes from this venv (no build isolation: no download), and the wheel is
    installed with --target so the checks below import the wheel, not this checkout.
    """
    root = tmp_path_factory.mktemp("image")
    context = root / "context"
    for path in _context_files():
        dest = context / path.relative_to(REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    dist = root / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dist),
            ".",
        ],
        cwd=context,
        check=True,
        capture_output=True,
    )
    (whl,) = dist.glob("kexp-*.whl")  # the name the Dockerfiles' `/dist/kexp-*.whl` expects
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "kexp/handlers/run.py" in names
    assert "kexp_trainers/run.py" in names
    assert "Provides-Extra: trainers" in meta
    assert "kexp-operator = kexp.handlers.run:main" in entry_points
    target = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(whl),
        ],
        check=True,
        capture_output=True,
    )
    return target


def _env(site: Path, **extra: str) -> dict[str, str]:
    # Nothing of a pod's contract, as in a bare `docker run IMAGE`.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEXP_", "AWS_"))}
    return {**env, "PYTHONPATH": str(site), **extra}


def test_the_wheel_is_what_runs(wheel_install: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import kexp, kexp_trainers; print(kexp.__file__, kexp_trainers.__file__)",
        ],
        env=_env(wheel_install),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [
        str(wheel_install / "kexp" / "__init__.py"),
        str(wheel_install / "kexp_trainers" / "__init__.py"),
    ]


def test_operator_entrypoint_starts(wheel_install: Path, tmp_path: Path) -> None:
    script = wheel_install / "bin" / "kexp-operator"
    proc = subprocess.run(
        [sys.executable, str(script), "--help"],
        env=_env(wheel_install),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: kexp-operator")
    assert "--all-namespaces" in proc.stdout
    # and the venv's own console script, as installed by `pip install -e`
    venv_script = Path(sys.executable).parent / "kexp-operator"
    proc = subprocess.run(
        [str(venv_script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("installed", ["wheel", "venv"])
def test_trainer_entrypoint_without_a_config_exits_2_naming_it(
    installed: str, wheel_install: Path, tmp_path: Path
) -> None:
    # A bare `docker run kexp/trainer`: no $KEXP_CONFIG, no mounted S3 Secret. Run from the
    # image's wheel and from this checkout's venv (`pip install -e`).
    env = _env(wheel_install)
    if installed == "venv":
        del env["PYTHONPATH"]
    proc = subprocess.run(
        [sys.executable, "-m", "kexp_trainers.run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{output[-2000:]}"
    assert "KEXP_CONFIG" in output
    assert "/etc/kexp/config.yaml" in output
    assert "Traceback" not in output


# ---- the kind cluster the images are loaded into -----------------------------------------------
def test_kind_config_has_a_control_plane_a_cpu_and_a_gpu_worker() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    roles = [n["role"] for n in config["nodes"]]
    assert sorted(roles) == ["control-plane", "worker", "worker"]
    gpu = [n for n in config["nodes"] if n.get("labels", {}).get("kexp.io/pool") == "gpu"]
    assert len(gpu) == 1
    # The taint kexp's GPU pods tolerate (the operator renders key nvidia.com/gpu, Exists).
    patch = yaml.safe_load(gpu[0]["kubeadmConfigPatches"][0])
    assert patch["nodeRegistration"]["taints"][0]["key"] == "nvidia.com/gpu"
    assert patch["nodeRegistration"]["taints"][0]["effect"] == "NoSchedule"
    ports = [m for n in config["nodes"] for m in n.get("extraPortMappings", [])]
    assert len({m["hostPort"] for m in ports}) == len(ports)
    assert all(m["listenAddress"] == "127.0.0.1" for m in ports)  # not exposed beyond the host
    assert all(30000 <= m["containerPort"] <= 32767 for m in ports)  # NodePort range
