"""The informer's pure parts: what a LIST changes in the mirror, and the child index."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp

from kexp.handlers.children import ChildIndex
from kexp.kube.informer import Informer, relist_changes, slim


def obj(name: str, rv: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv, "labels": labels},
        "status": {"phase": rv},
    }


def test_a_first_list_adds_everything() -> None:
    a, b = obj("a", "1"), obj("b", "2")
    mirror, changes = relist_changes({}, [a, b])
    assert mirror == {"a": slim(a), "b": slim(b)}
    assert mirror["a"] == {"metadata": {k: a["metadata"][k] for k in a["metadata"]}}
    assert changes == [("ADDED", a), ("ADDED", b)]


def test_a_relist_reports_what_changed_or_went_while_nobody_watched() -> None:
    known = {n: slim(obj(n, rv)) for n, rv in (("same", "1"), ("moved", "2"), ("gone", "3"))}
    moved, new = obj("moved", "5"), obj("new", "6")
    mirror, changes = relist_changes(known, [obj("same", "1"), moved, new])
    assert mirror == {"same": known["same"], "moved": slim(moved), "new": slim(new)}
    assert changes == [("MODIFIED", moved), ("ADDED", new), ("DELETED", known["gone"])]


def test_the_child_index_keeps_status_only_copies_by_experiment() -> None:
    index = ChildIndex()
    label = {"kexp.io/experiment": "run-1"}
    pod0, pod1 = obj("run-1-train-0", "1", **label), obj("run-1-train-1", "2", **label)
    pod0["spec"] = {"containers": [{"name": "trainer"}]}
    assert index.apply("ADDED", pod0) == ("ns", "run-1")
    assert index.apply("ADDED", pod1) == ("ns", "run-1")
    assert index[("ns", "run-1")] == [
        {"metadata": {"name": "run-1-train-0"}, "status": {"phase": "1"}},
        {"metadata": {"name": "run-1-train-1"}, "status": {"phase": "2"}},
    ]
    index.apply("MODIFIED", obj("run-1-train-0", "7", **label))
    assert [p["status"]["phase"] for p in index[("ns", "run-1")]] == ["7", "2"]
    index.apply("DELETED", pod0)
    index.apply("DELETED", pod1)
    assert ("ns", "run-1") not in index
    assert index.get(("ns", "run-1")) is None


def test_a_child_without_the_experiment_label_is_not_indexed() -> None:
    index = ChildIndex()
    assert index.apply("ADDED", obj("stray", "1", app="x")) is None
    assert len(index) == 0


class ScriptedApi:
    """Stands in for the API server's answers (this tests the informer's control flow only;
    tests/integration/test_informer.py runs it against the real API server)."""

    def __init__(self, lists: list[list[dict[str, Any]]], watches: list[list[Any]]) -> None:
        self.lists, self.watches = lists, watches
        self.calls: list[tuple[str, str | None]] = []
        self.scripted_out = asyncio.Event()

    async def request(
        self, method: str, path: str, *, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        self.calls.append(("LIST", None))
        items = self.lists.pop(0)
        return {"items": items, "metadata": {"resourceVersion": f"list-{len(self.lists)}"}}

    async def watch(
        self, path: str, params: dict[str, str], *, read_timeout_s: float
    ) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(("WATCH", params["resourceVersion"]))
        if not self.watches:
            self.scripted_out.set()
            await asyncio.Event().wait()  # the last watch stays open
        for event in self.watches.pop(0):
            if isinstance(event, Exception):
                raise event
            yield event


#: The API server's answer to a watch from a resourceVersion its watch cache no longer holds.
EXPIRED = {
    "type": "ERROR",
    "object": {"kind": "Status", "status": "Failure", "reason": "Expired", "code": 410},
}


def bookmark(rv: str) -> dict[str, Any]:
    return {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": rv}}}


def test_the_informer_resumes_after_a_bookmark_and_lists_again_when_gone_or_broken() -> None:
    a, b, c = obj("a", "1"), obj("b", "2"), obj("c", "3")
    api = ScriptedApi(
        lists=[[a], [a, b], [b, c]],
        watches=[
            [bookmark("7")],  # the server ends the watch; resume from the bookmark
            [{"type": "MODIFIED", "object": obj("a", "8")}, EXPIRED],
            [aiohttp.ClientConnectionError("reset")],
        ],
    )
    seen: list[tuple[str, str, str]] = []
    errors: list[str] = []

    async def scenario() -> Informer:
        informer = Informer(
            cast(Any, api),
            "/api/v1/namespaces/ns/pods",
            "app=x",
            lambda kind, o: seen.append(
                (kind, o["metadata"]["name"], o["metadata"]["resourceVersion"])
            ),
            on_error=errors.append,
            operation="watch_pods",
        )
        task = asyncio.create_task(informer.run())
        await asyncio.wait_for(api.scripted_out.wait(), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return informer

    informer = asyncio.run(scenario())
    assert api.calls == [
        ("LIST", None),
        ("WATCH", "list-2"),
        ("WATCH", "7"),
        ("LIST", None),  # after 410 Gone, at once
        ("WATCH", "list-1"),
        ("LIST", None),  # after the broken connection, RETRY_DELAYS_S[0] later
        ("WATCH", "list-0"),
    ]
    assert seen == [
        ("ADDED", "a", "1"),
        ("MODIFIED", "a", "8"),
        ("MODIFIED", "a", "1"),  # the relist's copy differs from the watched one
        ("ADDED", "b", "2"),
        ("ADDED", "c", "3"),
        ("DELETED", "a", "1"),
    ]
    assert errors == ["watch_pods"]  # Gone is routine; the broken connection is counted
    assert set(informer.objects) == {"b", "c"}
