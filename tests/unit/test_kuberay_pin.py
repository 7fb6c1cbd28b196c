"""KubeRay's CRDs are pinned like the Go tools: one version, in one go.mod, checked by go.sum."""

from __future__ import annotations

from pathlib import Path

import pytest

from kexp.dev import kuberay


def test_the_pin_is_kuberay_v1_4_2_with_its_checksums() -> None:
    assert kuberay.kuberay_version() == "v1.4.2"
    sums = (kuberay.PIN_DIR / "go.sum").read_text().splitlines()
    module = "github.com/ray-project/kuberay/ray-operator v1.4.2"
    assert any(line.startswith(f"{module} h1:") for line in sums)
    assert any(line.startswith(f"{module}/go.mod h1:") for line in sums)


def test_the_cache_is_keyed_by_version_and_go_sum(tmp_path: Path) -> None:
    where = kuberay.crds_cache_dir(tmp_path)
    assert where.parent == tmp_path / "kuberay"
    assert where.name.startswith("v1.4.2-")


def test_cached_crds_are_used_without_fetching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = kuberay.crds_cache_dir(tmp_path)
    where.mkdir(parents=True)
    crd = (
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
        "metadata: {name: %s}\n"
    )
    for name in kuberay.CRD_FILES:
        (where / name).write_text(crd % name.removeprefix("ray.io_").removesuffix(".yaml"))

    def no_download() -> Path:
        raise AssertionError("fetched although cached")

    monkeypatch.setattr(kuberay, "_download_module", no_download)
    names = [d["metadata"]["name"] for d in kuberay.load_kuberay_crds(tmp_path)]
    assert names == ["rayjobs", "rayclusters"]
