"""The FastAPI application: it owns every route, answers errors as JSON, documents /mutate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from gvirtus_kai_webhook.admission import AdmissionReviewer
from gvirtus_kai_webhook.app import MutateEndpoint, WebhookApp, mutate_endpoint
from gvirtus_kai_webhook.models import AdmissionReviewResponse
from starlette.routing import Route

from tests.webhook.conftest import InProcessWebhook, review_document


@pytest.fixture
async def api_client(webhook: InProcessWebhook) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the FastAPI app alone, without the served app's /mutate shortcut."""
    # The app's own error responses are under test; a re-raised exception must not end the test.
    transport = httpx.ASGITransport(app=webhook.app.api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as http:
        yield http


def assert_json_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {"code": status, "message": body["message"]}
    assert fragment in body["message"]


async def test_fastapi_app_alone_answers_a_review_like_the_served_app(
    api_client: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    body = json.dumps(review_document()).encode()
    through_fastapi = await api_client.post("/mutate", content=body)
    served = await client.post("/mutate", content=body)
    assert through_fastapi.status_code == 200
    assert through_fastapi.content == served.content
    AdmissionReviewResponse.model_validate_json(through_fastapi.content)


def test_served_app_calls_the_mutate_routes_own_endpoint(webhook: InProcessWebhook) -> None:
    routes = [r for r in webhook.app.api.routes if isinstance(r, Route) and r.path == "/mutate"]
    assert len(routes) == 1
    assert isinstance(routes[0].endpoint, MutateEndpoint)
    assert webhook.app.mutate is routes[0].endpoint
    assert mutate_endpoint(webhook.app.api) is routes[0].endpoint


async def test_body_larger_than_3_mib_is_a_413_through_fastapi(
    api_client: httpx.AsyncClient,
) -> None:
    response = await api_client.post("/mutate", content=b" " * (3 * 1024 * 1024 + 1))
    assert_json_error(response, 413, "larger than")


async def test_get_on_mutate_is_a_json_405_naming_post(client: httpx.AsyncClient) -> None:
    response = await client.get("/mutate")
    assert_json_error(response, 405, "use POST")
    assert response.headers["allow"] == "POST"


async def test_post_on_healthz_is_a_json_405_naming_get(client: httpx.AsyncClient) -> None:
    response = await client.post("/healthz", content=b"{}")
    assert_json_error(response, 405, "use GET")
    assert "GET" in response.headers["allow"].split(", ")


async def test_unknown_path_is_a_json_404_naming_the_path(client: httpx.AsyncClient) -> None:
    assert_json_error(await client.post("/validate", content=b"{}"), 404, "no route /validate")


async def test_trailing_slash_on_mutate_is_a_404_not_a_redirect(
    client: httpx.AsyncClient,
) -> None:
    assert_json_error(await client.post("/mutate/", content=b"{}"), 404, "no route /mutate/")


async def test_head_on_healthz_is_answered(client: httpx.AsyncClient) -> None:
    response = await client.head("/healthz")
    assert response.status_code == 200
    assert response.content == b""


async def test_failing_route_is_a_json_500_without_a_traceback(webhook: InProcessWebhook) -> None:
    def broken_readiness() -> bool:
        raise RuntimeError("readiness probe bug")

    reviewer = AdmissionReviewer(webhook.settings, webhook.resolver, webhook.metrics)
    app = WebhookApp(reviewer, webhook.metrics.registry, broken_readiness)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as http:
        response = await http.get("/readyz")
    assert_json_error(response, 500, "internal error")
    assert "Traceback" not in response.text
    assert "readiness probe bug" not in response.text


async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert {"/mutate", "/healthz", "/readyz", "/metrics"} <= set(document["paths"])
    assert "post" in document["paths"]["/mutate"]


async def test_openapi_mutate_schemas_resolve_to_the_admission_review_models(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/mutate"]["post"]
    request_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    answer_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schemas = document["components"]["schemas"]
    request_schema = schemas[request_ref.rsplit("/", 1)[-1]]
    answer_schema = schemas[answer_ref.rsplit("/", 1)[-1]]
    assert "request" in request_schema["properties"]
    assert "response" in answer_schema["properties"]
    # Every reference inside the document points at a schema it defines.
    refs = {ref.rsplit("/", 1)[-1] for ref in _refs(document)}
    assert refs <= set(schemas)


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []
