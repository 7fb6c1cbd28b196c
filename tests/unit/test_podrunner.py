"""What the local pod runner does to a container's command as the kubelet would."""

from __future__ import annotations

from kexp.dev.podrunner import expand_container_refs


def test_references_expand_like_the_kubelet_does() -> None:
    env = {"KEXP_NNODES": "2", "JOB_COMPLETION_INDEX": "1"}
    assert expand_container_refs("--nnodes=$(KEXP_NNODES)", env) == "--nnodes=2"
    assert expand_container_refs("--node-rank=$(JOB_COMPLETION_INDEX)", env) == "--node-rank=1"
    # Escaped, undefined and plain text stay as the kubelet leaves them.
    assert expand_container_refs("$$(KEXP_NNODES)", env) == "$(KEXP_NNODES)"
    assert expand_container_refs("$(MISSING)/x", env) == "$(MISSING)/x"
    assert expand_container_refs("a$b $(", env) == "a$b $("
