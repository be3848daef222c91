"""One way to call the Kubernetes API: every failure becomes an ``ApiFailure`` with the status
code the callers branch on, and ``ApiErrors`` counts and logs it the same way in every service."""

from __future__ import annotations

import logging

import httpx2
import pytest
from gvirtus_kai_common.kube import ApiErrors, ApiFailure, api_call
from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from prometheus_client import CollectorRegistry, Counter

REQUEST = httpx2.Request("PATCH", "https://api.example/api/v1/namespaces/a/pods/p")


def api_error(code: int, message: str) -> ApiError:
    return ApiError(request=REQUEST, status=Status(code=code, message=message))


@pytest.mark.parametrize("code", [403, 404, 409, 422, 429, 500])
def test_a_status_answer_keeps_its_code_and_message(code: int) -> None:
    with pytest.raises(ApiFailure) as caught, api_call("patch"):
        raise api_error(code, "the reason")
    assert (caught.value.verb, caught.value.code, caught.value.message) == (
        "patch",
        code,
        "the reason",
    )


def test_an_error_status_without_a_decoded_status_keeps_the_http_code() -> None:
    response = httpx2.Response(410, request=REQUEST)
    with pytest.raises(ApiFailure) as caught, api_call("watch"):
        raise httpx2.HTTPStatusError("gone", request=REQUEST, response=response)
    assert caught.value.code == 410


def test_no_answer_at_all_has_no_code_and_is_labelled_connection() -> None:
    with pytest.raises(ApiFailure) as caught, api_call("get"):
        raise httpx2.ConnectError("connection refused", request=REQUEST)
    assert caught.value.code is None
    assert caught.value.code_label == "connection"


def test_other_exceptions_pass_through_unchanged() -> None:
    with pytest.raises(KeyError), api_call("get"):
        raise KeyError("a bug, not an API failure")


def counted(registry: CollectorRegistry, verb: str, code: str) -> float:
    value = registry.get_sample_value("api_errors_total", {"verb": verb, "code": code})
    return value or 0.0


def test_a_failure_is_counted_by_verb_and_code_and_logged_with_its_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    errors = ApiErrors(Counter("api_errors", "", ["verb", "code"], registry=registry), "controller")
    with caplog.at_level(logging.INFO):
        errors.record(ApiFailure("patch", 500, "boom"), "pods", "assignment refused", pod="a/p")
    assert counted(registry, "patch", "500") == 1
    (record,) = caplog.records
    assert (record.levelno, record.getMessage()) == (logging.WARNING, "assignment refused")
    fields = {key: record.__dict__[key] for key in ("resource", "code", "error", "pod")}
    assert fields == {"resource": "pods", "code": "500", "error": "boom", "pod": "a/p"}


def test_a_403_is_logged_as_an_error_naming_what_to_grant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = ApiErrors(None, "controller")
    with caplog.at_level(logging.INFO):
        errors.record(ApiFailure("create", 403, "forbidden"), "pods/eviction", "eviction refused")
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        "forbidden: grant 'create' on 'pods/eviction' to the controller's ServiceAccount"
    )


def test_a_long_server_message_is_clipped_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        ApiErrors(None, "labeler").record(ApiFailure("patch", 422, "x" * 100_000), "nodes", "no")
    assert len(caplog.records[0].__dict__["error"]) < 1_000
