"""The webhook, configured as each scenario renders it, mutates the `helm test` pod's review.

This ties three pieces of the chart together that are easy to let drift apart: the webhook
Deployment's env, the helm test pod's arguments (enable label, GPU resource) and the real admission
code. Only the nameserver is replaced, by a loopback DNS server answering the rendered backend host.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import jsonpatch
import pytest
import yaml
from gvirtus_kai_webhook.admission import AdmissionReviewer
from gvirtus_kai_webhook.dns import BackendResolver
from gvirtus_kai_webhook.metrics import WebhookMetrics
from gvirtus_kai_webhook.settings import Settings

from tests.chart.conftest import CHART, SCENARIOS, container, env_of, load_values, render
from tests.dnsserver import LoopbackDnsServer
from tests.scriptmodule import load_script

BACKEND_ADDRESS = "10.96.7.9"


# files/webhook-check.py is the helm test pod's program; load it as the module it is.
CHECK = load_script(CHART / "files" / "webhook-check.py", "webhook_check")


@pytest.fixture(scope="module")
def dns_server() -> Iterator[LoopbackDnsServer]:
    with LoopbackDnsServer() as server:
        yield server


def _rendered_webhook(
    scenario: str, dns_server: LoopbackDnsServer, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, dict[str, Any]]:
    """Settings read from the scenario's rendered env, and the review its helm test pod sends."""
    manifests = render(scenario)
    assert manifests.of_component("webhook"), f"{scenario} renders no webhook: leave it out here"
    for name, value in env_of(manifests.one("Deployment", "webhook")).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GVIRTUS_KAI_DNS_NAMESERVERS", dns_server.nameserver)
    settings = Settings()
    dns_server.set_a(settings.backend_host, BACKEND_ADDRESS)
    # command: python3 -c SCRIPT URL ENABLE_LABEL GPU_RESOURCE --ca-...
    enable_label, gpu_resource = container(manifests.one("Pod", "helm-test"))["command"][4:6]
    review: dict[str, Any] = CHECK.admission_review("uid-1", enable_label, gpu_resource)
    return settings, review


async def _review_and_answer(
    scenario: str, dns_server: LoopbackDnsServer, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scenario's helm test review and the rendered webhook's ``response`` to it."""
    settings, review = _rendered_webhook(scenario, dns_server, monkeypatch)
    metrics = WebhookMetrics()
    reviewer = AdmissionReviewer(settings, BackendResolver(settings, metrics), metrics)
    answer = await reviewer.review(json.dumps(review).encode())
    response: dict[str, Any] = answer.response.model_dump(mode="json", exclude_none=True)
    return review, response


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_rendered_webhook_mutates_the_helm_test_review(
    scenario: str, dns_server: LoopbackDnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, response = await _review_and_answer(scenario, dns_server, monkeypatch)
    assert response["allowed"] is True, response.get("status")
    assert response.get("patchType") == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    assert isinstance(patch, list)
    assert patch


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_rendered_webhook_targets_the_gpu_resource_the_helm_test_pod_requests(
    scenario: str, dns_server: LoopbackDnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The webhook warns when no target container declares its GPU resource.
    _, response = await _review_and_answer(scenario, dns_server, monkeypatch)
    assert response["allowed"] is True, response.get("status")
    assert "warnings" not in response


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_rendered_webhook_sends_the_pod_to_the_rendered_frontend_nodes(
    scenario: str, dns_server: LoopbackDnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    review, response = await _review_and_answer(scenario, dns_server, monkeypatch)
    assert "patch" in response, response
    pod = jsonpatch.apply_patch(review["request"]["object"], base64.b64decode(response["patch"]))
    assert pod["spec"]["nodeSelector"] == {_frontend_label_key(scenario): "true"}


def _frontend_label_key(scenario: str) -> str:
    """``roleLabels.frontend.key`` as the scenario file sets it, else the chart default."""
    overrides = yaml.safe_load((CHART / "ci" / scenario).read_text()) or {}
    frontend = overrides.get("roleLabels", {}).get("frontend", {})
    key: str = frontend.get("key", load_values()["roleLabels"]["frontend"]["key"])
    return key
