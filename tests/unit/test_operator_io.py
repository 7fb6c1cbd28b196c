"""The operator's I/O shortcuts: orjson for kopf's watch streams, one S3 client per Secret."""

from __future__ import annotations

import importlib
import inspect
import json

import orjson
import pytest

from kexp.handlers import watch_decoding
from kexp.storage.s3 import S3Credentials, shared_s3_client


def test_kopf_decodes_watch_lines_with_orjson_after_the_swap() -> None:
    module = importlib.import_module(watch_decoding.KOPF_STREAM_MODULE)
    try:
        assert watch_decoding.decode_watches_with_orjson() is True
        assert module.json.loads is orjson.loads
        # Anything else kopf looks up in that module's json is the standard library's.
        assert module.json.dumps is json.dumps
        assert module.json.JSONDecodeError is json.JSONDecodeError
        # A second call (kopf runs startup handlers again on a restart) is harmless.
        assert watch_decoding.decode_watches_with_orjson() is True
    finally:
        module.json = json


def test_the_kopf_function_that_streams_watches_still_decodes_with_json_loads() -> None:
    # The swap only helps while kopf decodes each line with its module's json.loads; a kopf
    # that decodes elsewhere makes this fail, so the swap does not go stale unnoticed.
    module = importlib.import_module(watch_decoding.KOPF_STREAM_MODULE)
    assert "json.loads(" in inspect.getsource(module.stream)


def test_a_kopf_without_that_decoder_keeps_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module(watch_decoding.KOPF_STREAM_MODULE)
    monkeypatch.delattr(module, "json")
    assert watch_decoding.decode_watches_with_orjson() is False
    assert not hasattr(module, "json")


def test_orjson_reads_a_watch_line_as_the_standard_library_does() -> None:
    line = json.dumps(
        {
            "type": "MODIFIED",
            "object": {
                "metadata": {"name": "ppo-1", "labels": {"kexp.io/tag-x": "ü"}},
                "status": {"succeeded": 1, "score": 12.5, "ready": None, "done": True},
                "spec": {"seeds": [1, 2, 9223372036854775807], "lr": 3e-4},
            },
        }
    ).encode()
    assert orjson.loads(line.decode("utf-8")) == json.loads(line)


def test_one_s3_client_per_set_of_credentials() -> None:
    a = S3Credentials("http://127.0.0.1:9000", "ak", "sk")
    same = S3Credentials("http://127.0.0.1:9000", "ak", "sk")
    rotated = S3Credentials("http://127.0.0.1:9000", "ak", "sk2")
    assert shared_s3_client(a) is shared_s3_client(same)
    assert shared_s3_client(rotated) is not shared_s3_client(a)


def test_a_bad_endpoint_is_refused_every_time_not_cached() -> None:
    bad = S3Credentials("127.0.0.1:9000", "ak", "sk")
    for _ in range(2):
        with pytest.raises(ValueError, match="http"):
            shared_s3_client(bad)


def _watched() -> list[tuple[tuple[str, str, str], dict[str, object] | None]]:
    import kopf

    import kexp.handlers.experiments  # noqa: F401 - registers the handlers

    registry = kopf.get_default_registry()
    return [
        ((h.selector.group or "", h.selector.version or "", h.selector.any_name or ""), h.labels)
        for sub in (registry._indexing, registry._watching)
        for h in sub.get_all_handlers()
    ]


def test_the_api_server_filters_every_child_watch_by_the_managed_label() -> None:
    from kexp.handlers.experiments import MANAGED, child_watch_selectors

    selectors = child_watch_selectors()
    assert set(selectors.values()) == {"app.kubernetes.io/managed-by=kexp"}
    for resource, labels in _watched():
        if labels == MANAGED:
            assert resource in selectors, f"{resource} is watched whole; filter it in the API"
        if resource in selectors:
            # A handler without the filter would silently miss what the selector drops.
            assert labels is not None, resource
            assert MANAGED.items() <= labels.items(), resource
    watched = {resource for resource, _ in _watched()}
    assert set(selectors) <= watched


def test_kopf_applies_the_selector_to_rayjobs_not_to_experiments() -> None:
    import kopf
    from kopf._cogs.structs.references import Resource

    from kexp.handlers.experiments import child_watch_selectors

    settings = kopf.OperatorSettings()
    for resource, selector in child_watch_selectors().items():
        settings.watching.label_selectors[resource] = selector

    def selected(group: str, version: str, plural: str, kind: str) -> list[str]:
        res = Resource(group, version, plural, kind=kind, namespaced=True)
        return list(settings.watching.label_selectors.collect(res))

    managed = ["app.kubernetes.io/managed-by=kexp"]
    assert selected("ray.io", "v1", "rayjobs", "RayJob") == managed
    assert selected("kexp.io", "v1alpha1", "experiments", "Experiment") == []
    assert selected("", "v1", "configmaps", "ConfigMap") == []


def test_kopf_leaves_jobs_and_pods_to_kexps_informers_which_select_the_managed_label() -> None:
    from kexp.handlers.children import MANAGED_SELECTOR, WATCHED

    watched = {resource for resource, _ in _watched()}
    # Through kopf as well, every Job and pod event would be handled twice.
    assert ("batch", "v1", "jobs") not in watched
    assert ("", "v1", "pods") not in watched
    assert MANAGED_SELECTOR == "app.kubernetes.io/managed-by=kexp"
    assert [kind for kind, _ in WATCHED] == ["Job", "Pod"]
