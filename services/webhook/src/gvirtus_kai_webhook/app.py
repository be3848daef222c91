"""The webhook's HTTP surface: a FastAPI application, with ``POST /mutate`` kept off its slow parts.

``build_api`` returns the FastAPI app. It owns every route: ``/healthz``, ``/readyz`` and
``/metrics`` are ordinary FastAPI routes, ``/mutate`` is a Starlette route whose endpoint is the
raw ASGI callable ``MutateEndpoint``. The admission path is hot (every pod CREATE in the cluster
waits on it), so that endpoint reads the body and writes the answer itself: no request model, no
dependency injection, no response validation. Every error FastAPI itself answers (404, 405, a
validation error, an unexpected exception) gets the same JSON error body as the endpoint's own
400/413, never a 422 or a traceback. ``/openapi.json`` documents all routes, ``/mutate``
included; it is built once, on its first request.

``WebhookApp`` is what uvicorn serves: an ASGI callable that sends exactly ``POST /mutate`` to
the route's own ``MutateEndpoint`` object and everything else to the FastAPI app. Why: FastAPI's
middleware stack (error, telemetry, body-limit, exception and exit-stack layers, then the router)
costs about as much per request as the admission review itself: measured with
``bench/webhook.py`` (TLS, 16 connections, one CPU), serving ``/mutate`` through it took the
webhook from about 9,100 to 7,200 reviews per second (-20%), next to a target of 7,000. The
shortcut changes no behaviour: the route table still decides what exists (``WebhookApp`` takes
the endpoint object from it), and every other method and path goes through FastAPI.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .admission import AdmissionReviewer, HttpReply, error_body
from .models import AdmissionReview, AdmissionReviewResponse

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The API server sends at most 3 MiB objects (etcd's request limit), so a larger body is not a
# review; refusing it early bounds the memory one client can make us use.
MAX_BODY_BYTES = 3 * 1024 * 1024
MUTATE_PATH = "/mutate"
TITLE = "GVirtuS-KAI admission webhook"
API_VERSION = "0.1.0"

_JSON = b"application/json"
_JSON_TYPE = _JSON.decode()


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class MutateEndpoint:
    """``POST /mutate`` as a raw ASGI endpoint: body bytes in, AdmissionReview bytes out."""

    def __init__(self, reviewer: AdmissionReviewer) -> None:
        self._reviewer = reviewer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await _read_body(scope, receive)
        except _ClientGone:
            return
        except _BodyTooLarge:
            message = f"request body is larger than {MAX_BODY_BYTES} bytes"
            reply = self._reviewer.reject(413, message)
            # The rest of the body is never read, so the connection cannot be reused.
            await _send(send, reply.status, reply.body, [(b"connection", b"close")])
            return
        try:
            reply = await self._reviewer.review(body)
        except Exception:
            # review() handles every input; reaching this is a bug, answered without a traceback.
            log.exception("unexpected failure answering an admission review")
            reply = HttpReply(500, error_body(500, "internal error; see the webhook logs"))
        await _send(send, reply.status, reply.body)


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
    send: Send, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _WebhookAPI(FastAPI):
    """FastAPI whose OpenAPI document also describes the raw ``/mutate`` route."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = get_openapi(title=self.title, version=self.version, routes=self.routes)
            _, definitions = models_json_schema(
                [(AdmissionReview, "validation"), (AdmissionReviewResponse, "serialization")],
                ref_template="#/components/schemas/{model}",
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(definitions.get("$defs", {}))
            schema["paths"][MUTATE_PATH] = {"post": _mutate_operation()}
            self.openapi_schema = schema
        return self.openapi_schema


def _mutate_operation() -> dict[str, Any]:
    def body(model: str) -> dict[str, Any]:
        return {"content": {_JSON_TYPE: {"schema": {"$ref": f"#/components/schemas/{model}"}}}}

    def error(description: str) -> dict[str, Any]:
        schema = {
            "type": "object",
            "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
        }
        return {"description": description, "content": {_JSON_TYPE: {"schema": schema}}}

    return {
        "summary": "Review a pod CREATE (called by the Kubernetes API server)",
        "operationId": "mutate",
        "requestBody": {"required": True, **body("AdmissionReview")},
        "responses": {
            "200": {
                "description": "AdmissionReview answer: allowed, with a JSON Patch, or denied",
                **body("AdmissionReviewResponse"),
            },
            "400": error("The body is no AdmissionReview with a request.uid"),
            "413": error(f"The body is larger than {MAX_BODY_BYTES} bytes"),
        },
    }


def _error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(status, message), status, headers, _JSON_TYPE)


def _install_error_handlers(api: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 404:
            message = f"no route {request.url.path[:100]}"
        elif exc.status_code == 405 and headers and "Allow" in headers:
            message = f"use {headers['Allow']}"
        else:
            message = str(exc.detail)
        return _error_response(exc.status_code, message, headers)

    async def validation_error(_request: Request, exc: Exception) -> Response:
        # No route of ours takes parameters; kept so a future one never answers with a 422.
        assert isinstance(exc, RequestValidationError)
        return _error_response(400, f"malformed request: {exc.errors()[:3]}")

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.error(
            "unexpected failure on %s %s: %s",
            request.method,
            request.url.path[:100],
            type(exc).__name__,
        )
        return _error_response(500, "internal error; see the webhook logs")

    api.add_exception_handler(StarletteHTTPException, http_error)
    api.add_exception_handler(RequestValidationError, validation_error)
    api.add_exception_handler(Exception, unexpected_error)


def build_api(
    reviewer: AdmissionReviewer,
    metrics_registry: CollectorRegistry,
    is_ready: Callable[[], bool],
) -> FastAPI:
    """The FastAPI app with every route; ``POST /mutate`` is served by a ``MutateEndpoint``."""
    api = _WebhookAPI(
        title=TITLE,
        version=API_VERSION,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,  # "/mutate/" is no route; a redirect would only hide the typo
    )
    api.router.routes.append(
        Route(MUTATE_PATH, endpoint=MutateEndpoint(reviewer), methods=["POST"])
    )
    _install_error_handlers(api)

    @api.head("/healthz", include_in_schema=False)  # one documented operation per path
    @api.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> Response:
        """Liveness: the process serves HTTP."""
        return PlainTextResponse("ok\n")

    @api.head("/readyz", include_in_schema=False)  # one documented operation per path
    @api.get("/readyz", response_class=PlainTextResponse)
    async def readyz() -> Response:
        """Readiness: the server is listening and not shutting down."""
        if is_ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", status_code=503)

    @api.head("/metrics", include_in_schema=False)  # one documented operation per path
    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    return api


def mutate_endpoint(api: FastAPI) -> MutateEndpoint:
    """The ``MutateEndpoint`` that the app's ``POST /mutate`` route calls."""
    for route in api.router.routes:
        if not isinstance(route, Route) or route.path != MUTATE_PATH:
            continue
        if isinstance(route.endpoint, MutateEndpoint):
            return route.endpoint
    raise LookupError(f"the app has no {MUTATE_PATH} route served by a MutateEndpoint")


class WebhookApp:
    """The ASGI app uvicorn serves: ``POST /mutate`` straight to its endpoint, the rest to FastAPI.

    See the module docstring for why; ``api`` is the FastAPI app and owns every route.
    """

    def __init__(
        self,
        reviewer: AdmissionReviewer,
        metrics_registry: CollectorRegistry,
        is_ready: Callable[[], bool],
    ) -> None:
        self.api = build_api(reviewer, metrics_registry, is_ready)
        self.mutate = mutate_endpoint(self.api)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == MUTATE_PATH and scope["method"] == "POST":
            await self.mutate(scope, receive, send)
        else:
            await self.api(scope, receive, send)
