"""A small async Kubernetes REST client on aiohttp, with plain dicts in and out.

Why not kubernetes_asyncio: the operator only makes a handful of calls, and that client
builds model objects for every response and forces ``trust_env=True``, which makes aiohttp
read ``~/.netrc`` and the proxy variables in a thread on every request. Credentials come from
kopf's own login functions (service account in a cluster, else the kubeconfig), so there is
one way of authenticating for the whole operator. JSON goes through orjson, about twice as
fast as the standard library's on Kubernetes objects (see kexp.handlers.watch_decoding).
"""

from __future__ import annotations

import base64
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import orjson


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, body: str, operation: str) -> None:
        super().__init__(f"{operation}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context(
        cafile=info.ca_path,
        cadata=base64.b64decode(info.ca_data).decode() if info.ca_data else None,
    )
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data and info.private_key_data:
        # ssl can only load client certificates from files.
        folder = Path(tempfile.mkdtemp(prefix="kexp-cert-"))
        cert_file, key_file = folder / "tls.crt", folder / "tls.key"
        cert_file.write_bytes(base64.b64decode(info.certificate_data))
        key_file.write_bytes(base64.b64decode(info.private_key_data))
        key_file.chmod(0o600)
        cert, key = str(cert_file), str(key_file)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Credentials: the pod's service account inside a cluster, else the kubeconfig."""
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("no service account and no kubeconfig to connect with")
    return info


class Rest:
    """JSON requests to one API server."""

    #: Each call's limit. A pass whose call never gets an answer holds that Experiment's lock
    #: until then; a timeout fails the pass, which is retried a second later. One CI run saw an
    #: answer that never came (the Job was created, its response never arrived). 20 s is well
    #: above a whole pass under load (apply->Job p99 5.3 s with 1000 Experiments applied at
    #: once, bench/operator_throughput.py) and well below kopf's 60 s.
    DEFAULT_TIMEOUT_S = 20.0

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connections: int = 64,
    ) -> None:
        """``connections``: at most this many at once (0: no limit; each watch holds one)."""
        headers = {"Accept": "application/json", "User-Agent": "kexp-operator"}
        if info.token:
            headers["Authorization"] = f"Bearer {info.token}"
        elif info.username and info.password:
            basic = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        self.server = info.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=_ssl_context(info), limit=connections),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            trust_env=False,
            # Watch events carry whole objects, one per line; some exceed aiohttp's 64 KiB.
            read_bufsize=2**22,
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One call; the decoded JSON answer, or ApiError."""
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else None
        async with self._session.request(
            method, self.server + path, data=data, params=params, headers=headers
        ) as resp:
            raw = await resp.read()
            if resp.status >= 300:
                text = raw.decode("utf-8", errors="replace")
                raise ApiError(resp.status, text, f"{method} {path}")
            result: dict[str, Any] = orjson.loads(raw) if raw else {}
            return result

    async def watch(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        read_timeout_s: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch on a collection (``{"type": ..., "object": ...}``).

        ``read_timeout_s``: give up (TimeoutError) when nothing arrives for this long.
        """
        query = {**(params or {}), "watch": "1"}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=read_timeout_s)
        async with self._session.get(self.server + path, params=query, timeout=timeout) as resp:
            if resp.status >= 300:
                raise ApiError(resp.status, await resp.text(), f"WATCH {path}")
            async for line in resp.content:
                if line.strip():
                    yield orjson.loads(line)
