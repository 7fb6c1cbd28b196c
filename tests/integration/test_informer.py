"""kexp's informer against the real API server: LIST, WATCH with the label selector, and a
relist that reports what went while nobody watched.

What it does on 410 Gone is in tests/unit/test_informer.py: a young API server's watch cache
still holds every event since it started, so it cannot be made to answer 410 on demand.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kubernetes import client

from kexp.dev.stack import Stack
from kexp.kube.informer import Informer
from kexp.kube.rest import Rest, login

pytestmark = pytest.mark.stack


def config_map(name: str, labelled: bool) -> client.V1ConfigMap:
    labels = {"app.kubernetes.io/managed-by": "kexp"} if labelled else {"app": "other"}
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels), data={"k": "v"}
    )


def test_the_informer_mirrors_labelled_objects_and_relists_after_a_break(
    stack: Stack, kube: Any, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(stack.kubeconfig))
    core = client.CoreV1Api(kube)
    core.create_namespaced_config_map(namespace, config_map("before", True))
    core.create_namespaced_config_map(namespace, config_map("foreign", False))
    seen: list[tuple[str, str]] = []

    async def scenario() -> None:
        deleted = asyncio.Event()

        def record(kind: str, obj: dict[str, Any]) -> None:
            seen.append((kind, obj["metadata"]["name"]))
            if kind == "DELETED":
                deleted.set()

        rest = Rest(login(kopf.OperatorSettings()), connections=0)
        informer = Informer(
            rest,
            f"/api/v1/namespaces/{namespace}/configmaps",
            "app.kubernetes.io/managed-by=kexp",
            record,
        )
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), 10)
            assert seen == [("ADDED", "before")]

            await asyncio.to_thread(
                core.create_namespaced_config_map, namespace, config_map("during", True)
            )
            patched = await asyncio.to_thread(
                core.patch_namespaced_config_map, "before", namespace, {"data": {"k": "w"}}
            )
            await asyncio.to_thread(core.delete_namespaced_config_map, "during", namespace)
            await asyncio.wait_for(deleted.wait(), 10)
            assert seen == [
                ("ADDED", "before"),
                ("ADDED", "during"),
                ("MODIFIED", "before"),
                ("DELETED", "during"),
            ]
            assert set(informer.objects) == {"before"}
            kept = informer.objects["before"]["metadata"]
            assert kept["resourceVersion"] == patched.metadata.resource_version
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        # While nobody watches, one object goes and one comes; the next LIST says so.
        seen.clear()
        await asyncio.to_thread(core.delete_namespaced_config_map, "before", namespace)
        await asyncio.to_thread(
            core.create_namespaced_config_map, namespace, config_map("after", True)
        )
        version = await informer.relist()
        assert sorted(seen) == [("ADDED", "after"), ("DELETED", "before")]
        assert set(informer.objects) == {"after"}
        assert int(version) > 0

        await rest.close()

    asyncio.run(scenario())
