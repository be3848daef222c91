"""What ``server.py`` relies on in uvicorn beyond its public options.

The webhook server drives uvicorn's HTTP protocol itself (see ``WebhookServer.serve``): it builds
``config.http_protocol_class`` with a ``ServerState`` of its own, passes each connection's guard in
``app_state``, refreshes the Date header through ``ServerState.default_headers``, and the guard's
431 depends on when the protocol starts the app. None of this is promised by uvicorn, so an
upgrade that changes any of it must fail here, by name, rather than silently drop a bound.
"""

from __future__ import annotations

import asyncio
import inspect
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any, cast

import uvicorn
from packaging.requirements import Requirement
from packaging.utils import NormalizedName
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from tests.ci.buildfiles import REPO_ROOT, read_constraints

REQUEST = b"GET /x HTTP/1.1\r\nhost: webhook\r\n\r\n"


def http_protocol(app: Any) -> Callable[..., asyncio.Protocol]:
    """The protocol class as ``WebhookServer.serve`` gets it."""
    config = uvicorn.Config(app, http="httptools", ws="none", lifespan="off", log_config=None)
    config.load()
    protocol = cast(Callable[..., asyncio.Protocol], config.http_protocol_class)

    def build(**kwargs: Any) -> asyncio.Protocol:
        return protocol(config=config, **kwargs)

    return build


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def serving(factory: Callable[[], asyncio.Protocol]) -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def exchange(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> bytes:
    writer.write(REQUEST)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.wait_for(reader.readexactly(2), 5)  # the body, b"ok"
    return head


def test_uvicorn_and_httptools_are_pinned_exactly_and_alike_everywhere() -> None:
    project = tomllib.loads((REPO_ROOT / "services/webhook/pyproject.toml").read_text())
    pins = {(r := Requirement(raw)).name: r.specifier for raw in project["project"]["dependencies"]}
    constraints = read_constraints(REPO_ROOT / "constraints.txt")
    for name in ("uvicorn", "httptools"):
        assert str(pins[name]) == f"=={constraints[NormalizedName(name)]}", (
            f"{name}: the webhook's pyproject and constraints.txt must pin the same exact version; "
            "run this module against the new version before changing either"
        )
        assert version(name) == constraints[NormalizedName(name)]


def test_http_protocol_class_is_the_httptools_protocol_taking_server_and_app_state() -> None:
    config = uvicorn.Config(answer, http="httptools", ws="none", lifespan="off", log_config=None)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    parameters = inspect.signature(HttpToolsProtocol).parameters
    assert {"config", "server_state", "app_state"} <= set(parameters), (
        "WebhookServer.serve builds uvicorn's protocol with these keyword arguments"
    )


async def test_app_state_reaches_every_request_scope_state() -> None:
    seen: list[object] = []
    guard = object()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["state"].get("guard"))
        await answer(scope, receive, send)

    build = http_protocol(app)
    state = ServerState()
    async with serving(lambda: build(server_state=state, app_state={"guard": guard})) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await exchange(writer, reader)
        await exchange(writer, reader)  # a second request on the kept-alive connection
        writer.close()
    assert seen == [guard, guard], "the ConnectionGuard is found through scope['state']"


async def test_answers_carry_the_server_state_default_headers_as_they_are_at_each_request() -> None:
    build = http_protocol(answer)
    state = ServerState()
    async with serving(lambda: build(server_state=state, app_state={})) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        state.default_headers = [(b"date", b"first")]
        first = await exchange(writer, reader)
        state.default_headers = [(b"date", b"second")]  # replaced, as the Date refresh does
        second = await exchange(writer, reader)
        writer.close()
    assert b"\r\ndate: first\r\n" in first
    assert b"\r\ndate: second\r\n" in second, "the Date refresh replaces default_headers"


async def test_a_complete_head_starts_the_app_before_a_callback_scheduled_right_after() -> None:
    # ConnectionGuard counts a head as unclaimed (and too large) only if the app has not started
    # by the time a callback it schedules after handing the bytes to the protocol runs.
    events: list[str] = []
    loop = asyncio.get_running_loop()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        events.append("app started")
        await answer(scope, receive, send)

    build = http_protocol(app)

    class Forwarding(asyncio.Protocol):
        def __init__(self) -> None:
            self.http = build(server_state=ServerState(), app_state={})

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.http.connection_made(transport)

        def data_received(self, data: bytes) -> None:
            self.http.data_received(data)
            loop.call_soon(events.append, "callback")

        def connection_lost(self, exc: Exception | None) -> None:
            self.http.connection_lost(exc)

    async with serving(Forwarding) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await exchange(writer, reader)
        writer.close()
    assert events == ["app started", "callback"]
