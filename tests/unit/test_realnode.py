"""The real node's configuration and the registry-less image writer (pure parts)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from kexp.api import contract
from kexp.dev import images, realnode, toolchain
from kexp.dev.stack import Stack, StackConfig


def _stack(tmp_path: Path) -> Stack:
    stack = Stack(tmp_path / "state")
    stack.state_dir.mkdir(parents=True)
    stack.config_path.write_text(json.dumps(StackConfig(19400, "u", "p").__dict__))
    return stack


def test_kubelet_config_has_what_this_sandbox_needs(tmp_path: Path) -> None:
    node = realnode.RealNode(_stack(tmp_path))
    config = node.kubelet_config("192.0.2.2")
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failSwapOn"] is False
    assert config["cgroupRoot"] == "/kexp-19400"
    assert config["port"] == 19400 + realnode.KUBELET_PORT_OFFSET
    assert config["address"] == "192.0.2.2"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["registerWithTaints"][0]["key"] == realnode.NODE_LABEL


def test_containerd_config_clamps_oom_score_and_keeps_state_in_the_state_dir(
    tmp_path: Path,
) -> None:
    node = realnode.RealNode(_stack(tmp_path))
    text = node.containerd_config()
    assert "restrict_oom_score_adj = true" in text
    assert "SystemdCgroup = false" in text
    assert f'sandbox_image = "{images.PAUSE_IMAGE}"' in text
    for line in text.splitlines():
        if line.strip().startswith(("root =", "state =", "address =", "path =", "Root =")):
            assert str(node.dir) in line, line


def test_policy_sends_only_cpu_trainer_pods_without_simulated_failures() -> None:
    objs = {o["kind"]: o for o in realnode.policy_objects()}
    policy = objs["MutatingAdmissionPolicy"]["spec"]
    conditions = " && ".join(c["expression"] for c in policy["matchConditions"])
    assert contract.GPU_RESOURCE in conditions
    assert f"{contract.SIM_ANNOTATION_PREFIX}exit-code" in conditions
    assert contract.LABEL_ROLE in conditions
    mutation = policy["mutations"][0]["jsonPatch"]["expression"]
    assert "/spec/hostNetwork" in mutation
    assert realnode.NODE_LABEL in mutation
    binding = objs["ClusterRoleBinding"]
    assert binding["subjects"][0]["name"] == f"system:node:{realnode.NODE_NAME}"


def test_node_tools_are_not_built_for_a_plain_stack() -> None:
    assert "kubelet" in toolchain.ALL_TOOL_NAMES
    assert not set(toolchain.NODE_TOOL_NAMES) & set(toolchain.STACK_TOOL_NAMES)
    kubelet = next(t for t in toolchain.GO_TOOLS if t.name == "kubelet")
    apiserver = next(t for t in toolchain.GO_TOOLS if t.name == "kube-apiserver")
    assert kubelet.version == apiserver.version  # the kubelet matches the API server


def test_layers_are_reproducible_and_owned_by_root(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("x = 1\n")
    (src / "pkg" / "run").write_text("#!/bin/sh\n")
    (src / "pkg" / "run").chmod(0o700)
    (src / "pkg" / "link").symlink_to("a.py")
    first = images.write_layer(tmp_path / "one.tar", [("/opt/app", src / "pkg")])
    (src / "pkg" / "a.py").touch()  # a new mtime must not change the digest
    second = images.write_layer(tmp_path / "two.tar", [("/opt/app", src / "pkg")])
    assert first.digest == second.digest
    with tarfile.open(first.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"opt", "opt/app", "opt/app/a.py", "opt/app/link", "opt/app/run"}
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert members["opt/app/run"].mode & 0o755 == 0o755  # readable by the pod's uid 1000
    assert members["opt/app/link"].issym()


def test_oci_archive_names_every_ref_and_holds_every_blob(tmp_path: Path) -> None:
    layer = images.write_layer_from_files(tmp_path / "l.tar", {"/etc/x": b"y"}, {"/bin/p": "x"})
    image = images.Image(
        ["kexp.local/a:1", "example.com/b:2"], [layer], images.ImageConfig(entrypoint=["/p"])
    )
    buf = io.BytesIO()
    image.write_archive(buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        names = tar.getnames()
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    refs = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
    assert refs == ["kexp.local/a:1", "example.com/b:2"]
    assert {m["digest"] for m in index["manifests"]} == {image.digest}
    assert f"blobs/sha256/{layer.digest[7:]}" in names
    assert f"blobs/sha256/{image.digest[7:]}" in names


def _ended_pod(terminated: dict[str, object], **status: object) -> dict[str, object]:
    return {
        "metadata": {"name": "rn-train-x"},
        "spec": {"containers": [{"name": "trainer", "resources": {"limits": {"memory": "2Gi"}}}]},
        "status": {
            "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
            **status,
        },
    }


def test_termination_summary_names_the_oom_kill_and_the_limit_to_raise() -> None:
    summary = realnode.termination_summary(_ended_pod({"exitCode": 137, "reason": "OOMKilled"}))
    assert "exit code 137 (OOMKilled)" in summary
    assert "its memory limit is 2Gi (spec.resources.memory)" in summary


def test_termination_summary_names_an_eviction_and_says_no_oom() -> None:
    pod = _ended_pod(
        {"exitCode": 137, "reason": "Error"},
        reason="Evicted",
        message="The node was low on resource: memory.",
    )
    summary = realnode.termination_summary(pod)
    assert "pod rn-train-x: Evicted: The node was low on resource: memory." in summary
    assert "memory limit" not in summary


def test_termination_summary_of_a_pod_without_a_reason_says_so() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {}, "status": {}}
    assert realnode.termination_summary(pod) == "pod p ended without a recorded reason"


def test_termination_summary_of_an_eviction_without_a_message_ends_at_the_reason() -> None:
    pod = _ended_pod({"exitCode": 137, "reason": "Error"}, reason="Evicted")
    assert realnode.termination_summary(pod).endswith("; pod rn-train-x: Evicted")
