"""The /mutate protocol and the service endpoints, in process (ASGI) with a real DNS server."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jsonpatch
import pytest
from gvirtus_kai_common.logs import JsonFormatter
from gvirtus_kai_webhook import admission
from gvirtus_kai_webhook.app import MAX_BODY_BYTES
from gvirtus_kai_webhook.models import AdmissionReviewResponse

from tests.dnsserver import LoopbackDnsServer
from tests.webhook.conftest import BACKEND_ADDRESS, InProcessWebhook, review_document
from tests.webhookproc import BACKEND_HOST

UID = "0f4c7a52-8d0e-4b71-9a3c-5e2b1d6f7a90"


async def post_review(client: httpx.AsyncClient, document: Any) -> httpx.Response:
    return await client.post("/mutate", content=json.dumps(document).encode())


def answer(response: httpx.Response) -> AdmissionReviewResponse:
    """The body as an AdmissionReview, checked against the wire model."""
    assert response.status_code == 200, response.text
    return AdmissionReviewResponse.model_validate_json(response.content)


def patched_object(document: dict[str, Any], response: httpx.Response) -> Any:
    result = answer(response).response
    assert result.patchType == "JSONPatch"
    assert result.patch is not None
    operations = json.loads(base64.b64decode(result.patch))
    return jsonpatch.apply_patch(document["request"]["object"], operations)


# --- admission decisions --------------------------------------------------------------------


async def test_gvirtus_pod_is_mutated_with_the_resolved_backend_address(
    client: httpx.AsyncClient,
) -> None:
    document = review_document()
    pod = patched_object(document, await post_review(client, document))
    properties = json.loads(pod["metadata"]["annotations"]["gvirtus.io/properties"])
    endpoint = properties["communicator"][0]["endpoint"]
    assert endpoint["server_address"] == BACKEND_ADDRESS


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
async def test_answer_uses_the_api_version_of_the_request(
    client: httpx.AsyncClient, api_version: str
) -> None:
    document = review_document()
    document["apiVersion"] = api_version
    review = answer(await post_review(client, document))
    assert review.apiVersion == api_version
    assert review.kind == "AdmissionReview"


async def test_answer_echoes_the_request_uid(client: httpx.AsyncClient) -> None:
    document = review_document()
    document["request"]["uid"] = "a-very-particular-uid"
    assert answer(await post_review(client, document)).response.uid == "a-very-particular-uid"


async def test_other_kinds_are_allowed_unchanged(client: httpx.AsyncClient) -> None:
    document = review_document()
    document["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    result = answer(await post_review(client, document)).response
    assert result.allowed
    assert result.patch is None
    assert result.patchType is None


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
async def test_operations_other_than_create_are_allowed_unchanged(
    client: httpx.AsyncClient, operation: str
) -> None:
    document = review_document()
    document["request"]["operation"] = operation
    result = answer(await post_review(client, document)).response
    assert result.allowed
    assert result.patch is None


async def test_pod_without_the_enable_label_is_allowed_unchanged(
    client: httpx.AsyncClient, dns_server: LoopbackDnsServer
) -> None:
    document = review_document()
    del document["request"]["object"]["metadata"]["labels"]["gvirtus.io/enabled"]
    result = answer(await post_review(client, document)).response
    assert result.allowed
    assert result.patch is None
    assert dns_server.query_count(BACKEND_HOST) == 0  # no lookup for pods we leave alone


async def test_pod_without_a_gpu_limit_is_mutated_with_a_warning(
    client: httpx.AsyncClient,
) -> None:
    result = answer(await post_review(client, review_document("pod-no-gpu-v1.json"))).response
    assert result.allowed
    assert result.patch is not None
    assert result.warnings
    assert "nvidia.com/gpu" in result.warnings[0]


async def test_pod_already_mutated_is_allowed_without_a_patch(
    client: httpx.AsyncClient,
) -> None:
    document = review_document()
    document["request"]["object"] = patched_object(document, await post_review(client, document))
    result = answer(await post_review(client, document)).response
    assert result.allowed
    assert result.patch is None


async def test_pod_the_mutation_refuses_is_denied_with_code_400(
    client: httpx.AsyncClient,
) -> None:
    document = review_document()
    document["request"]["object"]["metadata"]["annotations"] = {"gvirtus.io/strategy": "sed"}
    result = answer(await post_review(client, document)).response
    assert not result.allowed
    assert result.status is not None
    assert result.status.code == 400
    assert "no explicit command" in result.status.message


async def test_unresolvable_backend_denies_naming_the_host_and_reason(
    client: httpx.AsyncClient, dns_server: LoopbackDnsServer
) -> None:
    dns_server.set_nxdomain(BACKEND_HOST)
    result = answer(await post_review(client, review_document())).response
    assert not result.allowed
    assert result.status is not None
    assert result.status.code == 503
    assert BACKEND_HOST in result.status.message
    assert "NXDOMAIN" in result.status.message


async def test_dns_timeout_denies_saying_how_long_it_waited(
    make_webhook: Callable[..., InProcessWebhook], dns_server: LoopbackDnsServer
) -> None:
    dns_server.set_silent(BACKEND_HOST)
    async with make_webhook(dns_timeout_seconds=0.3).client() as client:
        result = answer(await post_review(client, review_document())).response
    assert not result.allowed
    assert result.status is not None
    assert "within 0.3s" in result.status.message


async def test_a_bug_in_the_mutation_denies_with_code_500(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise KeyError("spec")

    monkeypatch.setattr(admission, "mutate_pod", broken)
    result = answer(await post_review(client, review_document())).response
    assert not result.allowed
    assert result.status is not None
    assert result.status.code == 500
    assert "internal error" in result.status.message


# --- malformed requests ---------------------------------------------------------------------


def assert_json_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["code"] == status
    assert fragment in body["message"]


async def test_body_that_is_not_json_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/mutate", content=b'{"apiVersion": ')
    assert_json_error(response, 400, "not valid JSON")


async def test_json_that_is_not_an_object_is_a_400(client: httpx.AsyncClient) -> None:
    assert_json_error(await post_review(client, [1, 2]), 400, "JSON AdmissionReview object")


async def test_review_without_uid_is_a_400(client: httpx.AsyncClient) -> None:
    document = review_document()
    del document["request"]["uid"]
    assert_json_error(await post_review(client, document), 400, "no request.uid")


async def test_review_without_request_is_a_400(client: httpx.AsyncClient) -> None:
    document = review_document()
    del document["request"]
    assert_json_error(await post_review(client, document), 400, "no request.uid")


async def test_unknown_api_version_is_a_400_naming_the_supported_ones(
    client: httpx.AsyncClient,
) -> None:
    document = review_document()
    document["apiVersion"] = "admission.k8s.io/v2"
    response = await post_review(client, document)
    assert_json_error(response, 400, "admission.k8s.io/v1, admission.k8s.io/v1beta1")


async def test_wrong_field_type_with_a_readable_uid_is_denied_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    document = review_document()
    document["request"]["operation"] = ["CREATE"]
    result = answer(await post_review(client, document)).response
    assert result.uid == UID
    assert not result.allowed
    assert result.status is not None
    assert result.status.code == 400
    assert "request.operation" in result.status.message


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("containers", ["app"], "spec.containers.0"),
        ("containers", {"name": "app"}, "spec.containers"),
        ("volumes", "gvirtus", "spec.volumes"),
        ("nodeSelector", {"gvirtus.io/frontend.allowed": True}, "spec.nodeSelector"),
    ],
)
async def test_a_pod_with_wrong_typed_fields_is_denied_with_400_not_patched(
    client: httpx.AsyncClient, field: str, value: Any, named: str
) -> None:
    document = review_document()
    document["request"]["object"]["spec"][field] = value
    result = answer(await post_review(client, document)).response
    assert (result.allowed, result.patch) == (False, None)
    assert result.status is not None
    assert result.status.code == 400
    assert named in result.status.message


async def test_a_container_with_a_wrong_typed_env_is_denied_naming_it(
    client: httpx.AsyncClient,
) -> None:
    document = review_document()
    document["request"]["object"]["spec"]["containers"][0]["env"] = "GVIRTUS_CONFIG=/x"
    result = answer(await post_review(client, document)).response
    assert result.status is not None
    assert (result.allowed, result.status.code) == (False, 400)
    assert "spec.containers.0.env" in result.status.message


async def test_pod_create_without_object_is_denied(client: httpx.AsyncClient) -> None:
    document = review_document()
    del document["request"]["object"]
    result = answer(await post_review(client, document)).response
    assert not result.allowed
    assert result.status is not None
    assert "request.object is missing" in result.status.message


async def test_body_declared_larger_than_3_mib_is_a_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/mutate", content=b" " * (MAX_BODY_BYTES + 1))
    assert_json_error(response, 413, "larger than")


async def test_streamed_body_growing_past_3_mib_is_a_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * (1024 * 1024)

    response = await client.post("/mutate", content=chunks())  # chunked: no length up front
    assert_json_error(response, 413, "larger than")


async def test_body_of_exactly_3_mib_is_read(client: httpx.AsyncClient) -> None:
    body = json.dumps(review_document()).encode()
    response = await client.post("/mutate", content=body.ljust(MAX_BODY_BYTES))
    assert answer(response).response.allowed


async def test_get_on_mutate_is_a_405(client: httpx.AsyncClient) -> None:
    response = await client.get("/mutate")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_unknown_path_is_a_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/validate")).status_code == 404


# --- health, readiness, metrics, logs -------------------------------------------------------


async def test_healthz_answers_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.text == "ok\n"


async def test_readyz_follows_readiness(
    client: httpx.AsyncClient, webhook: InProcessWebhook
) -> None:
    assert (await client.get("/readyz")).status_code == 200
    webhook.ready = False
    assert (await client.get("/readyz")).status_code == 503


async def test_metrics_count_admissions_by_outcome(
    client: httpx.AsyncClient, dns_server: LoopbackDnsServer
) -> None:
    await post_review(client, review_document())
    other = review_document()
    other["request"]["operation"] = "UPDATE"
    await post_review(client, other)
    dns_server.set_nxdomain(BACKEND_HOST)
    await post_review(client, review_document())  # cached address: still mutated
    await client.post("/mutate", content=b"nonsense")
    text = (await client.get("/metrics")).text
    assert 'gvirtus_webhook_admissions_total{outcome="mutated"} 2.0' in text
    assert 'gvirtus_webhook_admissions_total{outcome="allowed"} 1.0' in text
    assert 'gvirtus_webhook_admissions_total{outcome="error"} 1.0' in text
    assert "gvirtus_webhook_admission_duration_seconds_count 4.0" in text
    assert 'gvirtus_webhook_dns_queries_total{type="A"} 1.0' in text
    assert "gvirtus_webhook_dns_cache_hits_total 1.0" in text


async def test_metrics_count_denials_and_dns_failures(
    client: httpx.AsyncClient, dns_server: LoopbackDnsServer, webhook: InProcessWebhook
) -> None:
    dns_server.set_nxdomain(BACKEND_HOST)
    await post_review(client, review_document())
    assert webhook.sample("gvirtus_webhook_admissions_total", outcome="denied") == 1
    assert webhook.sample("gvirtus_webhook_dns_failures_total", reason="nxdomain") == 1


async def test_each_admission_logs_one_line_with_its_identity_and_outcome(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gvirtus_kai_webhook.admission")
    await post_review(client, review_document())
    lines = [r for r in caplog.records if r.name == "gvirtus_kai_webhook.admission"]
    assert len(lines) == 1
    line = lines[0].__dict__
    assert line["uid"] == UID
    assert line["namespace"] == "ml"
    assert line["pod"] == "trainer-6d8f9c7b5-"  # generateName: the pod has no name yet
    assert line["outcome"] == "mutated"
    assert line["duration_ms"] >= 0
    assert "object" not in line  # never the whole pod


async def test_denial_log_line_carries_the_reason(
    client: httpx.AsyncClient, dns_server: LoopbackDnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gvirtus_kai_webhook.admission")
    dns_server.set_nxdomain(BACKEND_HOST)
    await post_review(client, review_document())
    (line,) = [r for r in caplog.records if r.getMessage() == "admission"]
    assert line.__dict__["outcome"] == "denied"
    assert "NXDOMAIN" in line.__dict__["reason"]


# --- user-supplied text is clipped in answers and log lines ----------------------------------


def formatted_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every captured record as the JSON line the process would write."""
    formatter = JsonFormatter()
    return [formatter.format(record) for record in caplog.records]


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("gvirtus.io/strategy", "x" * 200_000),
        ("gvirtus.io/containers", ",".join(f"c{i}" for i in range(40_000))),
        ("gvirtus.io/home", "relative/" * 20_000),
    ],
)
async def test_a_huge_annotation_is_clipped_in_the_answer_and_the_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, annotation: str, value: str
) -> None:
    caplog.set_level(logging.INFO)
    document = review_document()
    document["request"]["object"]["metadata"].setdefault("annotations", {})[annotation] = value
    response = await post_review(client, document)
    result = answer(response).response
    assert result.status is not None
    assert (result.allowed, result.status.code) == (False, 400)
    assert "clipped" in result.status.message
    assert len(response.content) < 4096
    lines = formatted_log_lines(caplog)
    assert lines
    assert max(len(line) for line in lines) < 4096


async def test_a_huge_uid_and_names_are_clipped_in_the_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    document = review_document()
    document["request"]["uid"] = "u" * 100_000
    document["request"]["namespace"] = "n" * 100_000
    document["request"]["object"]["metadata"]["generateName"] = "g" * 100_000
    await post_review(client, document)
    (line,) = [line for line in formatted_log_lines(caplog) if '"admission"' in line]
    assert len(line) < 4096
    assert "clipped, 100000 characters" in line


async def test_a_huge_api_version_is_clipped_in_the_error(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    document = review_document()
    document["apiVersion"] = "v" * 100_000
    response = await post_review(client, document)
    assert response.status_code == 400
    assert len(response.content) < 4096
    assert max(len(line) for line in formatted_log_lines(caplog)) < 4096
