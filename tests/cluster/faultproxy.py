"""A fault-injecting HTTP proxy in front of the real API server.

A real kube-apiserver cannot be told to answer the next PATCH with a 500, to drop a watch
connection, to put an ERROR event into a watch stream, to expire a watch (410 Gone) or to be
unreachable for a second while etcd keeps changing; this proxy does exactly that and nothing
else. Every answer it does not inject is the real server's. It also records each request and
the status it got, so tests can check what a client sent (a merge patch conditional on a
resourceVersion, a watch resuming from the last version it saw).

Clients talk plain HTTP to it on loopback and send their own credentials (a ServiceAccount token
in the kubeconfig), which it passes on: RBAC applies to the client's identity as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn
import yaml
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

Event = dict[str, Any]
# Request headers passed upstream; the rest (host, length, encoding) httpx sets itself.
FORWARDED_HEADERS = ("authorization", "content-type", "accept", "user-agent")
_END = object()  # ends a watch stream
REASONS = {409: "Conflict", 410: "Expired", 500: "InternalError", 503: "ServiceUnavailable"}


def status_object(code: int, message: str) -> dict[str, Any]:
    """A ``meta/v1 Status`` failure, shaped as the API server sends it."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": REASONS.get(code, "Unknown"),
        "code": code,
    }


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int = 0

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


@dataclass
class _Fault:
    remaining: int
    status: int
    method: str | None
    path: str | None = None


@dataclass
class _Hook:
    matches: Callable[[RecordedRequest], bool]
    action: Callable[[], Awaitable[object]]


@dataclass
class _Watch:
    events: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    delivered: list[str] = field(default_factory=list)  # resourceVersions streamed so far


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FaultProxy:
    """``async with FaultProxy(server, ca_file) as proxy``: listening on ``proxy.url``."""

    def __init__(self, upstream: str, ca_file: Path) -> None:
        self.requests: list[RecordedRequest] = []
        self.port = _free_port()
        self._upstream = httpx.AsyncClient(
            base_url=upstream,
            verify=ssl.create_default_context(cafile=str(ca_file)),
            timeout=httpx.Timeout(30.0, read=None),  # watches stay open
        )
        self._faults: list[_Fault] = []
        self._hooks: list[_Hook] = []
        self._watches: list[_Watch] = []
        self._expire_next_watch = False
        self._down = False
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path, token: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "client", "user": {"token": token}}],
            "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "client"}}],
            "current-context": "proxy",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # -- running ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (again, on the same port after ``stop()``)."""
        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._down = False
        self._serving = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._serving.done():
                self._serving.result()  # raises why it could not start
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Go away: the listener closes, then every watch ends and its connection with it (a
        client reconnecting finds nobody listening)."""
        self._down = True
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # no waiting for open watches to end by themselves
            await self._serving
        self._server = self._serving = None
        self.drop_watches()
        await self.wait_until(lambda: not self._watches, within=30.0)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        await self._upstream.aclose()

    # -- faults -----------------------------------------------------------------------------------

    def fail_next(
        self, count: int, status: int, method: str | None = None, path: str | None = None
    ) -> None:
        """Answer the next ``count`` requests (of ``method`` to ``path``, if given) with
        ``status``."""
        self._faults.append(_Fault(count, status, method, path))

    def before_next(
        self, matches: Callable[[RecordedRequest], bool], action: Callable[[], Awaitable[object]]
    ) -> None:
        """Run ``action`` once, before the next matching request is passed on."""
        self._hooks.append(_Hook(matches, action))

    def drop_watches(self) -> None:
        """End every open watch stream (as a load balancer or an API server restart does)."""
        for watch in self._watches:
            watch.events.put_nowait(_END)

    def inject_watch_event(self, event: Event) -> None:
        """Send ``event`` on every open watch stream, then end the stream."""
        for watch in self._watches:
            watch.events.put_nowait(json.dumps(event))
            watch.events.put_nowait(_END)

    def expire_watches(self) -> None:
        """The API server's answer to a version it no longer has: an ERROR event, 410 Expired."""
        self.inject_watch_event({"type": "ERROR", "object": status_object(410, "too old")})

    def expire_next_watch(self) -> None:
        """The next watch request is answered with 410 Expired, whatever version it asks for."""
        self._expire_next_watch = True

    # -- what happened ----------------------------------------------------------------------------

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def delivered_versions(self) -> list[str]:
        """resourceVersions of the events streamed on the open watches."""
        return [version for watch in self._watches for version in watch.delivered]

    async def settled(self, within: float = 30.0) -> None:
        """Until every request but the open watches has its answer."""
        await self.wait_until(
            lambda: all(r.status for r in self.requests if not r.is_watch), within=within
        )

    def requests_to(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    async def wait_until(self, condition: Callable[[], object], within: float) -> float:
        """Poll ``condition`` until truthy; the seconds it took (TimeoutError after ``within``)."""
        started = time.monotonic()
        async with asyncio.timeout(within):
            while True:
                if condition():
                    break
                await asyncio.sleep(0.01)
        return time.monotonic() - started

    # -- the ASGI application ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        body = await request.body()
        record = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers=dict(request.headers),
            body=json.loads(body) if body else None,
        )
        self.requests.append(record)
        response = await self._answer(record, body, scope["query_string"])
        await response(scope, receive, send)

    async def _answer(self, record: RecordedRequest, body: bytes, query: bytes) -> Response:
        for hook in list(self._hooks):
            if hook.matches(record):
                self._hooks.remove(hook)
                await hook.action()
        for fault in self._faults:
            if (
                fault.remaining
                and fault.method in (None, record.method)
                and fault.path in (None, record.path)
            ):
                fault.remaining -= 1
                record.status = fault.status
                payload = json.dumps(status_object(fault.status, "injected by the test proxy"))
                return Response(payload, fault.status, media_type="application/json")
        if record.is_watch and self._expire_next_watch:
            self._expire_next_watch = False
            record.status = 200
            event = {"type": "ERROR", "object": status_object(410, "too old resource version")}
            return Response(json.dumps(event) + "\n", 200, media_type="application/json")
        upstream = self._upstream.build_request(
            record.method,
            httpx.URL(record.path, query=query),
            headers={k: v for k, v in record.headers.items() if k in FORWARDED_HEADERS},
            content=body,
        )
        try:
            answer = await self._upstream.send(upstream, stream=record.is_watch)
        except httpx.HTTPError as error:
            record.status = 502
            return Response(str(error), 502)
        record.status = answer.status_code
        if not record.is_watch or answer.status_code != 200:
            content = await answer.aread()
            media_type = answer.headers.get("content-type")
            return Response(content, answer.status_code, media_type=media_type)
        return StreamingResponse(self._stream(answer), media_type="application/json")

    async def _stream(self, answer: httpx.Response) -> Any:
        watch = _Watch()
        self._watches.append(watch)
        if self._down:  # opened while stopping: ends at once
            watch.events.put_nowait(_END)

        async def pump() -> None:
            with contextlib.suppress(httpx.HTTPError):
                async for line in answer.aiter_lines():
                    if line:
                        watch.events.put_nowait(line)
            watch.events.put_nowait(_END)

        pumping = asyncio.create_task(pump())
        try:
            while (line := await watch.events.get()) is not _END:
                assert isinstance(line, str)
                metadata = json.loads(line).get("object", {}).get("metadata", {})
                if "resourceVersion" in metadata:
                    watch.delivered.append(metadata["resourceVersion"])
                yield line + "\n"
        finally:
            self._watches.remove(watch)
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping
            await answer.aclose()
