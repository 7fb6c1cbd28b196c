"""Pins, cache keys and build failures of the tool installer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kexp.dev import toolchain
from kexp.dev.toolchain import GoTool, ToolError, go_mod_version

GO_MOD = """module example.com/x

go 1.24.0

require (
\tk8s.io/kubernetes v1.34.2
\tgo.etcd.io/etcd/server/v3 v3.6.4 // indirect
)

require sigs.k8s.io/kwok v0.7.0
"""


@pytest.mark.parametrize(
    ("module", "version"),
    [
        ("k8s.io/kubernetes", "v1.34.2"),
        ("go.etcd.io/etcd/server/v3", "v3.6.4"),
        ("sigs.k8s.io/kwok", "v0.7.0"),
    ],
)
def test_go_mod_version_reads_block_and_single_line_requires(module: str, version: str) -> None:
    assert go_mod_version(GO_MOD, module) == version


def test_go_mod_version_does_not_match_a_module_prefix() -> None:
    with pytest.raises(ToolError, match=r"does not require k8s\.io/kube$"):
        go_mod_version(GO_MOD, "k8s.io/kube")


def test_every_pinned_go_tool_has_a_version_and_a_go_sum() -> None:
    for tool in toolchain.GO_TOOLS:
        assert tool.version.startswith("v"), tool.name
        assert (tool.module_dir / "go.sum").stat().st_size > 0, tool.name


def test_kubernetes_binaries_are_stamped_with_their_version() -> None:
    apiserver = next(t for t in toolchain.GO_TOOLS if t.name == "kube-apiserver")
    flags = " ".join(apiserver.ldflags())
    assert f"k8s.io/component-base/version.gitVersion={apiserver.version}" in flags
    assert "k8s.io/component-base/version.gitMinor=34" in flags


def test_cache_path_is_keyed_by_name_version_and_go_sum(tmp_path: Path) -> None:
    tool = next(t for t in toolchain.GO_TOOLS if t.name == "kwok")
    path = tool.cached_path(tmp_path)
    assert path.parent == tmp_path / "bin"
    assert path.name.startswith(f"kwok-{tool.version}-")


def test_cache_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KEXP_CACHE_DIR", str(tmp_path / "c"))
    assert toolchain.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("KEXP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert toolchain.cache_dir() == tmp_path / "x" / "kexp"


def test_unknown_tool_names_are_refused() -> None:
    with pytest.raises(ToolError, match=r"unknown tool\(s\) \['kubelett'\]"):
        toolchain.ensure_tools(["kubelett"])


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
def test_a_failed_build_names_the_module_and_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = tmp_path / "gotools" / "broken"
    mod.mkdir(parents=True)
    (mod / "go.mod").write_text(
        "module kexp.io/broken\n\ngo 1.24\n\nrequire example.com/nope v1.2.3\n"
    )
    (mod / "go.sum").write_text("")
    monkeypatch.setattr(toolchain, "GOTOOLS_DIR", tmp_path / "gotools")
    tool = GoTool("nope", "broken", "example.com/nope", "example.com/nope/cmd/nope")
    with pytest.raises(ToolError) as err:
        toolchain.build_go_tool(tool, tmp_path / "bin" / "nope")
    assert "building nope from example.com/nope@v1.2.3 failed" in str(err.value)
    assert not (tmp_path / "bin" / "nope").exists()
    assert list((tmp_path / "bin").iterdir()) == []  # no half-written temporary left behind
