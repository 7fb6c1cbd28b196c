"""Keep the Helm chart's copies of generated and shared files equal to their sources.

Helm can only read files inside the chart, so ``helm/kexp`` carries copies of:

- the CRDs (``crds/*.yaml``, generated from the models by ``kexp.api.crd``) in ``crds/``;
- the Grafana dashboards (``dashboards/*.json``) in ``files/dashboards/``;
- the alert rules (``dashboards/kexp-alerts.rules.yaml``) in ``files/``.

``python -m kexp.api.chart_sync`` (``make chart-sync``) regenerates the CRDs in both places
and copies the rest; ``--check`` exits 1 with a diff when any copy differs, which is what the
unit tests run. Paths are relative to the repository root (``--root``, default: the current
directory), like ``kexp.api.crd``'s.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from kexp.api import crd

CHART_DIR: Final = Path("helm/kexp")
DASHBOARDS_DIR: Final = Path("dashboards")
RULES_FILE: Final = "kexp-alerts.rules.yaml"


def expected(root: Path) -> dict[Path, str | None]:
    """Every chart-owned copy (relative to ``root``) and its wanted text; None: must not exist.

    The CRDs come from the generator, for ``crds/`` and the chart alike, so the two copies are
    equal and neither can be stale.
    """
    chart = CHART_DIR
    wanted: dict[Path, str | None] = {}
    for name, text in crd.generate().items():
        wanted[Path("crds") / name] = text
        wanted[chart / "crds" / name] = text
    for stale in sorted((root / chart / "crds").glob("*.yaml")):
        wanted.setdefault(stale.relative_to(root), None)
    sources = root / DASHBOARDS_DIR
    for source in sorted(sources.glob("*.json")):
        wanted[chart / "files" / "dashboards" / source.name] = source.read_text()
    for stale in sorted((root / chart / "files" / "dashboards").glob("*.json")):
        wanted.setdefault(stale.relative_to(root), None)
    rules = sources / RULES_FILE
    wanted[chart / "files" / RULES_FILE] = rules.read_text() if rules.exists() else None
    return wanted


def check(root: Path) -> list[str]:
    """A unified diff (or a line saying what is extra) for every copy that is out of date."""
    problems = []
    for rel, text in expected(root).items():
        path = root / rel
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if text is None:
            problems.append(f"{rel}: has no source any more (delete it)\n")
            continue
        diff = difflib.unified_diff(
            (current or "").splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=str(rel),
            tofile=f"{rel} (expected)",
        )
        problems.append("".join(diff) or f"{rel}: missing\n")
    return problems


def sync(root: Path) -> list[Path]:
    """Write the CRDs to ``crds/`` and the chart, copy the dashboards and rules; files changed."""
    changed = []
    for rel, text in expected(root).items():
        path = root / rel
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: sync the chart's copies, or with --check report whether they are current."""
    parser = argparse.ArgumentParser(prog="python -m kexp.api.chart_sync", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path(), help="repository root")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a copy in the chart is out of date"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.root)
        for problem in problems:
            sys.stdout.write(problem)
        if problems:
            print("the chart's copies are out of date: run `make chart-sync`", file=sys.stderr)
            return 1
        return 0
    for path in sync(args.root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
