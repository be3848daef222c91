"""The webhook's HTTP surface as a plain ASGI application.

No web framework: the admission path is hot (every pod CREATE in the cluster waits on it), and a
framework's routing, dependency injection and body validation would cost more than the review
itself. Five routes need no more than this.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .admission import AdmissionReviewer, HttpReply, error_body

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The API server sends at most 3 MiB objects (etcd's request limit), so a larger body is not a
# review; refusing it early bounds the memory one client can make us use.
MAX_BODY_BYTES = 3 * 1024 * 1024

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class WebhookApp:
    def __init__(
        self,
        reviewer: AdmissionReviewer,
        metrics_registry: CollectorRegistry,
        is_ready: Callable[[], bool],
    ) -> None:
        self._reviewer = reviewer
        self._registry = metrics_registry
        self._is_ready = is_ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/mutate":
            if method != "POST":
                await _send(send, 405, _JSON, error_body(405, "use POST"), [(b"allow", b"POST")])
                return
            await self._mutate(scope, receive, send)
            return
        if method not in ("GET", "HEAD"):
            await _send(send, 405, _TEXT, b"use GET\n", [(b"allow", b"GET, HEAD")])
        elif path == "/healthz":
            await _send(send, 200, _TEXT, b"ok\n")
        elif path == "/readyz":
            if self._is_ready():
                await _send(send, 200, _TEXT, b"ready\n")
            else:
                await _send(send, 503, _TEXT, b"not ready\n")
        elif path == "/metrics":
            body = generate_latest(self._registry)
            await _send(send, 200, CONTENT_TYPE_LATEST.encode(), body)
        else:
            await _send(send, 404, _JSON, error_body(404, f"no route {path[:100]}"))

    async def _mutate(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await _read_body(scope, receive)
        except _ClientGone:
            return
        except _BodyTooLarge:
            message = f"request body is larger than {MAX_BODY_BYTES} bytes"
            reply = self._reviewer.reject(413, message)
            # The rest of the body is never read, so the connection cannot be reused.
            await _send(send, reply.status, _JSON, reply.body, [(b"connection", b"close")])
            return
        try:
            reply = await self._reviewer.review(body)
        except Exception:
            # review() handles every input; reaching this is a bug, answered without a traceback.
            log.exception("unexpected failure answering an admission review")
            reply = HttpReply(500, error_body(500, "internal error; see the webhook logs"))
        await _send(send, reply.status, _JSON, reply.body)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = 0  # the server already rejects malformed lengths; count instead
            if declared > MAX_BODY_BYTES:
                raise _BodyTooLarge
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:  # chunked uploads declare no length up front
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(
    send: Send,
    status: int,
    content_type: bytes,
    body: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
