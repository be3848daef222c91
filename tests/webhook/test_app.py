"""The FastAPI application: every route, errors answered as JSON, /mutate documented."""

from __future__ import annotations

import json

import httpx
from gvirtus_kai_webhook.admission import AdmissionReviewer
from gvirtus_kai_webhook.app import build_app
from gvirtus_kai_webhook.models import AdmissionReviewResponse, ErrorBody

from tests.webhook.conftest import InProcessWebhook, review_document


def assert_json_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = ErrorBody.model_validate_json(response.content)
    assert body.code == status
    assert fragment in body.message


async def test_a_review_answer_validates_as_the_response_model(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/mutate", content=json.dumps(review_document()).encode())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    AdmissionReviewResponse.model_validate_json(response.content)


async def test_body_larger_than_3_mib_is_a_413_closing_the_connection(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/mutate", content=b" " * (3 * 1024 * 1024 + 1))
    assert_json_error(response, 413, "larger than")
    assert response.headers["connection"] == "close"


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


async def test_a_huge_unknown_path_is_clipped_in_the_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/" + "a" * 10_000, content=b"{}")
    assert_json_error(response, 404, "(clipped, 10001 characters in all)")
    assert len(response.content) < 300


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
    app = build_app(reviewer, webhook.metrics.registry, broken_readiness)
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
