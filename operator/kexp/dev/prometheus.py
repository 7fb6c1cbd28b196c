"""The local Prometheus: its configuration, run-time scrape targets, and PromQL queries.

Targets are added at run time through ``file_sd_configs``: each target is one JSON file in
``targets/``, which Prometheus watches, so adding or removing a target needs no reload.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: Scrape often so tests and demos see fresh values within seconds.
SCRAPE_INTERVAL = "2s"
_TARGET_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


class PrometheusError(RuntimeError):
    """A query failed or did not return what was waited for."""


def render_config(targets_dir: Path, *, rule_files: list[str] | None = None) -> dict[str, Any]:
    """The Prometheus configuration of the local stack (pure)."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": rule_files or [],
        "scrape_configs": [
            {
                "job_name": "kexp",
                "file_sd_configs": [
                    {"files": [str(targets_dir / "*.json")], "refresh_interval": "5s"}
                ],
            }
        ],
    }


def write_config(path: Path, targets_dir: Path) -> None:
    """Write the configuration file (and create the targets dir it watches)."""
    targets_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(render_config(targets_dir), sort_keys=False))


@dataclass(frozen=True)
class Prometheus:
    """A handle on a running Prometheus and the targets dir it watches."""

    url: str
    targets_dir: Path

    def add_target(self, name: str, address: str, labels: dict[str, str] | None = None) -> Path:
        """Scrape ``address`` (host:port, path /metrics) as job ``name`` from now on."""
        if not _TARGET_NAME.match(name):
            raise ValueError(f"target name {name!r} must be letters, digits, '.', '_' or '-'")
        entry = [{"targets": [address], "labels": {"job": name, **(labels or {})}}]
        path = self.targets_dir / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(entry))
        # Prometheus reads the file on change; an atomic rename avoids a half-written read.
        os.replace(tmp, path)
        return path

    def remove_target(self, name: str) -> None:
        """Stop scraping the target added under ``name``."""
        (self.targets_dir / f"{name}.json").unlink(missing_ok=True)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Run an instant PromQL query and return its result vector."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - local http URL
                body = json.load(resp)
        except OSError as exc:
            raise PrometheusError(f"query {promql!r} failed: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"query {promql!r} failed: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, promql: str, *, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Poll ``promql`` until it returns a non-empty result (scrapes are periodic)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"{promql!r} returned nothing within {timeout_s:.0f}s")
            time.sleep(0.5)
