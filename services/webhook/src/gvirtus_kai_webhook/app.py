"""The webhook's HTTP surface: a FastAPI application.

``POST /mutate`` reads the body itself (bounded in size and in time, which a body parameter could
not be) and answers with the typed ``AdmissionReviewResponse``. Every error, FastAPI's own
included (404, 405, an unexpected exception), is answered with the same JSON ``ErrorBody``, never
a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from gvirtus_kai_common.logs import clip
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response

from gvirtus_kai_webhook.admission import AdmissionReviewer, RequestRejected
from gvirtus_kai_webhook.models import AdmissionReview, AdmissionReviewResponse, ErrorBody

log = logging.getLogger(__name__)

# The API server sends at most 3 MiB objects (etcd's request limit), so a larger body is not a
# review; refusing it early bounds the memory one client can make us use.
MAX_BODY_BYTES = 3 * 1024 * 1024
MUTATE_PATH = "/mutate"
# Called for GPU pods that are no GVirtuS pods: keeps them off the device plugin's virtual GPUs.
GUARD_PATH = "/guard-plain-gpu-pods"
TITLE = "GVirtuS-KAI admission webhook"
API_VERSION = "0.1.0"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = ErrorBody(code=status, message=message).model_dump()
    return JSONResponse(body, status, headers)


async def read_body(request: Request, reviewer: AdmissionReviewer, seconds: float) -> bytes:
    """The request body, or ``RequestRejected``: over ``MAX_BODY_BYTES`` (413), or not all
    received within ``seconds`` (408: a client sending a byte a second is let go)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise reviewer.reject(413, f"request body is larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:  # chunked uploads declare no length up front
                    raise reviewer.reject(
                        413, f"request body is larger than {MAX_BODY_BYTES} bytes"
                    )
    except TimeoutError:
        raise reviewer.reject(408, f"request body not received within {seconds:g}s") from None
    return bytes(body)


# The OpenAPI request body of ``/mutate``: read by hand, so FastAPI cannot infer it.
_MUTATE_REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AdmissionReview"}}},
}


def build_app(
    reviewer: AdmissionReviewer,
    metrics_registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    *,
    body_timeout: float = 10.0,
) -> FastAPI:
    api = FastAPI(
        title=TITLE,
        version=API_VERSION,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,  # "/mutate/" is no route; a redirect would only hide the typo
    )

    @api.exception_handler(RequestRejected)
    async def rejected(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestRejected)
        # A body not read to its end leaves the connection unusable for another request.
        headers = {"connection": "close"} if exc.status in (408, 413) else None
        return error_response(exc.status, exc.message, headers)

    @api.exception_handler(ClientDisconnect)
    async def client_gone(_request: Request, _exc: Exception) -> Response:
        return error_response(400, "the client went away")  # nobody is left to read it

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 404:
            message = f"no route {clip(request.url.path, 100)}"
        elif exc.status_code == 405 and headers and "Allow" in headers:
            message = f"use {headers['Allow']}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, headers)

    @api.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.error(
            "unexpected failure",
            extra={
                "method": clip(request.method, 16),
                "path": clip(request.url.path, 100),
                "error": clip(repr(exc)),
            },
        )
        return error_response(500, "internal error; see the webhook logs")

    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "The body is no AdmissionReview with a uid"},
        408: {"model": ErrorBody, "description": "The body did not arrive in time"},
        413: {"model": ErrorBody, "description": f"The body is over {MAX_BODY_BYTES} bytes"},
    }

    @api.post(
        MUTATE_PATH,
        response_model=AdmissionReviewResponse,
        response_model_exclude_none=True,
        responses=errors,
        openapi_extra={"requestBody": _MUTATE_REQUEST_BODY},
        summary="Review a pod CREATE (called by the Kubernetes API server)",
    )
    async def mutate(request: Request) -> Response:
        """AdmissionReview answer: allowed, with a JSON Patch, or denied."""
        body = await read_body(request, reviewer, body_timeout)
        answer = await reviewer.review(body)
        # Validated when it was built; a Response is sent as is, where returning the model would
        # have FastAPI validate it again (about 7% of a review's CPU time).
        return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")

    @api.post(
        GUARD_PATH,
        response_model=AdmissionReviewResponse,
        response_model_exclude_none=True,
        responses=errors,
        openapi_extra={"requestBody": _MUTATE_REQUEST_BODY},
        summary="Keep a GPU pod that is no GVirtuS pod off virtual GPUs (called by the API server)",
    )
    async def guard(request: Request) -> Response:
        """AdmissionReview answer: allowed, with a JSON Patch adding a required node affinity
        that excludes the nodes whose GPUs are virtual; never denied."""
        body = await read_body(request, reviewer, body_timeout)
        answer = await reviewer.review(body, guard=True)
        return Response(answer.model_dump_json(exclude_none=True), media_type="application/json")

    @api.head("/healthz", include_in_schema=False)  # one documented operation per path
    @api.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> Response:
        """Liveness: the process serves HTTP."""
        return PlainTextResponse("ok\n")

    @api.head("/readyz", include_in_schema=False)
    @api.get("/readyz", response_class=PlainTextResponse)
    async def readyz() -> Response:
        """Readiness: the server is listening and not shutting down."""
        if is_ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", status_code=503)

    @api.head("/metrics", include_in_schema=False)
    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        # FastAPI lists only the models of parameters it parses; add the request's.
        if api.openapi_schema is None:
            schemas = FastAPI.openapi(api).setdefault("components", {}).setdefault("schemas", {})
            review = AdmissionReview.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(review.pop("$defs", {}), AdmissionReview=review)
        assert api.openapi_schema is not None  # FastAPI.openapi stored it
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return api
