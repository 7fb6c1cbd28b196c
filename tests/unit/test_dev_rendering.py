"""Pure pieces of the local stack: ports, kubeconfig, nodes, kwok stages, Prometheus config."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import yaml

from kexp.api import contract
from kexp.dev import cluster, prometheus
from kexp.dev.stack import Ports
from kexp.storage.s3 import S3Credentials


def test_ports_are_consecutive_from_the_base_and_distinct() -> None:
    ports = Ports.from_base(20000)
    values = list(vars(ports).values())
    assert values == list(range(20000, 20000 + len(values)))
    assert ports.etcd == 20000
    assert ports.apiserver == 20002


def test_kubeconfig_points_at_the_server_with_the_ca_and_token(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nabc\n")
    cfg = cluster.render_kubeconfig("https://127.0.0.1:1234", ca, "tok")
    assert cfg["current-context"] == "kexp-dev"
    cl = cfg["clusters"][0]["cluster"]
    assert cl["server"] == "https://127.0.0.1:1234"
    assert base64.b64decode(cl["certificate-authority-data"]) == ca.read_bytes()
    assert cfg["users"][0]["user"] == {"token": "tok"}


def test_gpu_node_advertises_nvidia_gpus_and_is_managed_by_kwok() -> None:
    node = cluster.render_node("g", "8", "32Gi", 4)
    assert node["status"]["capacity"][contract.GPU_RESOURCE] == "4"
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    assert node["metadata"]["annotations"][cluster.KWOK_NODE_ANNOTATION] == "fake"
    cpu = cluster.render_node("c", "8", "32Gi", 0)
    assert contract.GPU_RESOURCE not in cpu["status"]["capacity"]


def test_s3_secret_has_exactly_the_contract_keys() -> None:
    creds = S3Credentials("http://127.0.0.1:9000", "ak", "sk")
    secret = cluster.render_s3_secret("kexp-s3", "ns", creds)
    assert set(secret["stringData"]) == set(contract.S3_SECRET_KEYS)
    assert secret["stringData"][contract.S3_SECRET_KEY] == "sk"
    assert "sk" not in repr(creds)


def test_kwok_config_is_four_pod_stages_with_end_states() -> None:
    docs = list(yaml.safe_load_all(cluster.KWOK_CONFIG))
    assert [d["metadata"]["name"] for d in docs] == [
        "pod-ready",
        "pod-complete",
        "pod-fail",
        "pod-delete",
    ]
    assert all(d["kind"] == "Stage" for d in docs)
    complete = docs[1]["spec"]["next"]["statusTemplate"]
    assert "phase: Succeeded" in complete
    assert "exitCode: 0" in complete
    fail = docs[2]["spec"]
    assert "phase: Failed" in fail["next"]["statusTemplate"]
    assert {"key": f'.metadata.annotations["{cluster.SIM_EXIT_CODE}"]', "operator": "Exists"} in (
        fail["selector"]["matchExpressions"]
    )


def test_prometheus_config_watches_the_targets_dir(tmp_path: Path) -> None:
    cfg = prometheus.render_config(tmp_path / "targets")
    sd = cfg["scrape_configs"][0]["file_sd_configs"][0]
    assert sd["files"] == [str(tmp_path / "targets" / "*.json")]
    assert cfg["global"]["scrape_interval"] == prometheus.SCRAPE_INTERVAL


def test_prometheus_target_files_are_written_atomically_and_removable(tmp_path: Path) -> None:
    prom = prometheus.Prometheus("http://127.0.0.1:1", tmp_path)
    path = prom.add_target("trainer-a", "127.0.0.1:9090", {"experiment": "a"})
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:9090"], "labels": {"job": "trainer-a", "experiment": "a"}}
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer-a.json"]
    prom.remove_target("trainer-a")
    assert not path.exists()
