"""A mirror of one kind's labelled objects in one namespace: LIST, then WATCH, what client-go
calls an informer.

Why kexp watches its Jobs and pods itself rather than through kopf: kopf runs every watch event
through its whole per-object machinery (a worker per object, causes, a logger, progress state,
the kwargs of each index and event handler) before any kexp code runs. The ten or so events
of one Job and its pod cost the operator 12.8-15.5 CPU-ms that way, and 3.6-4.5 here
(``bench/operator_foreign_load.py --kexp-labels``; docs/operator.md, Departures).
kopf still watches the Experiments and templates, where its handlers earn their keep.

The protocol is the API server's own: a LIST (in pages) gives the objects and a
resourceVersion; a WATCH from there gives every later change, with bookmarks that move the
resourceVersion on while nothing matches. When the watch ends (the server's timeout) it is
resumed from the last resourceVersion; when that is too old (410 Gone) or the connection
fails, a new LIST replaces the mirror, and whatever vanished meanwhile is reported deleted.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable
from typing import Any, Final

import aiohttp

from kexp.kube.rest import ApiError, Rest

log = logging.getLogger(__name__)

#: The server ends each watch after this long, up to 20% more (jittered, so watches do not
#: all restart at once); the informer then resumes it.
WATCH_TIMEOUT_S: Final = 300
#: A watch that sends nothing, not even a bookmark, for this long is presumed dead (longer
#: than the server's longest timeout: it sends a bookmark about every minute anyway).
READ_TIMEOUT_S: Final = WATCH_TIMEOUT_S * 1.2 + 60
PAGE_SIZE: Final = 500
#: Waits before a new LIST after a failure, growing to the last.
RETRY_DELAYS_S: Final = (0.5, 1.0, 2.0, 5.0, 10.0)

Objects = dict[str, dict[str, Any]]
#: What the mirror keeps of each object: enough to tell a change and to report a deletion.
#: Whole pods are about 8 KB of JSON each; the consumer keeps what it reads of them.
KEPT_METADATA: Final = ("name", "namespace", "uid", "labels", "resourceVersion")
#: Called with ("ADDED" | "MODIFIED" | "DELETED", object) for every change, in order.
Handler = Callable[[str, dict[str, Any]], None]


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as the mirror keeps it: its identity, labels and resourceVersion."""
    meta = obj["metadata"]
    return {"metadata": {k: meta[k] for k in KEPT_METADATA if k in meta}}


def relist_changes(
    known: Objects, listed: Iterable[dict[str, Any]]
) -> tuple[Objects, list[tuple[str, dict[str, Any]]]]:
    """The new mirror after a LIST, and the changes that turn ``known`` into it.

    Objects by name, as ``slim`` keeps them. An object whose resourceVersion is what the mirror
    holds is not reported again; one the LIST no longer has is reported deleted (it went while
    nobody watched), as the mirror last knew it.
    """
    mirror: Objects = {}
    changes: list[tuple[str, dict[str, Any]]] = []
    for obj in listed:
        name = obj["metadata"]["name"]
        mirror[name] = slim(obj)
        before = known.get(name)
        if before is None:
            changes.append(("ADDED", obj))
        elif before["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
            changes.append(("MODIFIED", obj))
    changes += [("DELETED", obj) for name, obj in known.items() if name not in mirror]
    return mirror, changes


class Informer:
    """Keeps ``objects`` (slim copies, by name) equal to the objects at ``path`` that match
    ``label_selector``, and calls ``on_change`` with the whole object for each change.
    ``synced`` is set once the first LIST is in."""

    def __init__(
        self,
        rest: Rest,
        path: str,
        label_selector: str,
        on_change: Handler,
        *,
        on_error: Callable[[str], None] | None = None,
        operation: str = "watch",
    ) -> None:
        """``on_error(operation)`` is called for each failed LIST or WATCH (for a metric)."""
        self.rest = rest
        self.operation = operation
        self.path = path
        self.label_selector = label_selector
        self.on_change = on_change
        self.on_error = on_error or (lambda _operation: None)
        self.objects: Objects = {}
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """LIST and WATCH until cancelled; failures are logged and retried, never raised.

        The wait before listing again grows with each failure in a row (RETRY_DELAYS_S), and
        starts again from the first once a watch has run to the server's timeout."""
        failures = 0
        while True:
            try:
                version = await self.relist()
                while True:
                    version = await self.watch(version)
                    failures = 0
            except Gone:
                log.debug("watch of %s expired; listing again", self.path)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever went wrong (the API, the connection, or a handler), a mirror that
                # stopped would leave every pass of the namespace blind: list again.
                if isinstance(exc, (ApiError, aiohttp.ClientError, TimeoutError, ValueError)):
                    self.on_error(self.operation)
                else:
                    log.exception("handling a change at %s failed", self.path)
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
                log.warning(
                    "watch of %s failed (%s); listing again in %.1fs", self.path, exc, delay
                )
                await asyncio.sleep(delay)

    async def relist(self) -> str:
        """Replace the mirror with a fresh LIST, report what changed; its resourceVersion."""
        items: list[dict[str, Any]] = []
        params = {"labelSelector": self.label_selector, "limit": str(PAGE_SIZE)}
        while True:
            page = await self.rest.request("GET", self.path, params=params)
            items += page.get("items") or []
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                break
            params = {**params, "continue": cont}
        self.objects, changes = relist_changes(self.objects, items)
        for kind, obj in changes:
            self.on_change(kind, obj)
        self.synced.set()
        return str(page["metadata"]["resourceVersion"])

    async def watch(self, version: str) -> str:
        """Apply one watch's events from ``version`` on; the resourceVersion it ended at.

        Raises Gone when ``version`` is too old to watch from.
        """
        params = {
            "labelSelector": self.label_selector,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(int(WATCH_TIMEOUT_S * random.uniform(1.0, 1.2))),  # noqa: S311
        }
        try:
            async for event in self.rest.watch(self.path, params, read_timeout_s=READ_TIMEOUT_S):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", ""))
                    raise ApiError(int(obj.get("code") or 500), str(obj), f"WATCH {self.path}")
                version = str(obj["metadata"]["resourceVersion"])
                if kind == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if kind == "DELETED":
                    self.objects.pop(name, None)
                else:
                    self.objects[name] = slim(obj)
                self.on_change(str(kind), obj)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone(exc.body) from exc
            raise
        return version
