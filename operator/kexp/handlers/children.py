"""kexp's Jobs and pods as passes read them, mirrored by kexp's own informers, per namespace.

The watches of a namespace start the first time an Experiment of it is handled (so they follow
whatever namespaces kopf was told to serve), and a pass of that namespace waits until both
have listed once: a pass never decides on a Job or pod it has not been told about yet. Why
not kopf's watches: see ``kexp.kube.informer``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from kexp.api import contract
from kexp.kube.informer import Informer
from kexp.kube.rest import Rest

Key = tuple[str, str]
#: The label selector of every child watch: the API server sends only what kexp labelled.
MANAGED_SELECTOR: Final = f"{contract.LABEL_MANAGED_BY}={contract.MANAGED_BY}"
#: (kind, collection path in a namespace) of each child kind kexp watches itself.
WATCHED: Final = (
    ("Job", "/apis/batch/v1/namespaces/{ns}/jobs"),
    ("Pod", "/api/v1/namespaces/{ns}/pods"),
)
#: Called with (kind, event type, object) for every change a watch reports.
ChangeHandler = Callable[[str, str, dict[str, Any]], None]


def status_only(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a pass reads of a Job or pod: its name and status."""
    return {"metadata": {"name": obj["metadata"]["name"]}, "status": dict(obj.get("status") or {})}


class ChildIndex(Mapping[Key, list[dict[str, Any]]]):
    """One kind of child, by (namespace, Experiment): the status-only copy of each."""

    def __init__(self) -> None:
        self._by_owner: dict[Key, dict[str, dict[str, Any]]] = {}

    def __getitem__(self, key: Key) -> list[dict[str, Any]]:
        return list(self._by_owner[key].values())

    def __iter__(self) -> Iterator[Key]:
        return iter(self._by_owner)

    def __len__(self) -> int:
        return len(self._by_owner)

    def apply(self, kind: str, obj: Mapping[str, Any]) -> Key | None:
        """Record one watch event; the Experiment the object belongs to (None: no owner label)."""
        meta = obj["metadata"]
        owner = (meta.get("labels") or {}).get(contract.LABEL_EXPERIMENT)
        if not owner:
            return None
        key = (str(meta.get("namespace") or ""), str(owner))
        if kind == "DELETED":
            children = self._by_owner.get(key)
            if children is not None:
                children.pop(meta["name"], None)
                if not children:
                    del self._by_owner[key]
        else:
            self._by_owner.setdefault(key, {})[meta["name"]] = status_only(obj)
        return key


class ChildWatches:
    """The Jobs and pods of every namespace with Experiments, kept by informers."""

    def __init__(
        self,
        rest: Rest,
        on_change: ChangeHandler,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.rest = rest
        self.on_change = on_change
        self.on_error = on_error
        self.jobs = ChildIndex()
        self.pods = ChildIndex()
        self._informers: dict[str, list[Informer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def index(self, kind: str) -> ChildIndex:
        return self.jobs if kind == "Job" else self.pods

    async def ready(self, namespace: str) -> None:
        """Start the watches of ``namespace`` if need be; return once each has listed."""
        informers = self._informers.get(namespace)
        if informers is None:
            informers = self._informers[namespace] = [
                self._start(kind, path.format(ns=namespace)) for kind, path in WATCHED
            ]
        for informer in informers:
            if not informer.synced.is_set():
                await informer.synced.wait()

    def _start(self, kind: str, path: str) -> Informer:
        def changed(event: str, obj: dict[str, Any]) -> None:
            self.on_change(kind, event, obj)

        informer = Informer(
            self.rest,
            path,
            MANAGED_SELECTOR,
            changed,
            on_error=self.on_error,
            operation=f"watch_{kind.lower()}s",
        )
        task = asyncio.get_running_loop().create_task(informer.run(), name=f"watch {path}")
        self._tasks.add(task)
        return informer

    async def close(self) -> None:
        """Stop every watch and close the connections."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.rest.close()
