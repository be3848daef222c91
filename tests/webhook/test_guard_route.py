"""The guard route of the real ``gvirtus-webhook`` process over HTTPS, as the API server calls it
for GPU pods that are no GVirtuS pods: every review answered with an AdmissionReview, never a
refusal, and the patch keeps the pod off the nodes the process is told have virtual GPUs."""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import jsonpatch
import pytest
import trustme
from gvirtus_kai_webhook.app import GUARD_PATH

from tests.dnsserver import LoopbackDnsServer
from tests.webhook.conftest import RunningWebhook, launch, review_document

ENABLE = "gvirtus.io/enabled"
# A device plugin limited to one node pool: what the chart renders from devicePlugin.nodeSelector.
VIRTUAL = "gvirtus.io/frontend.allowed=true,nvidia.com/gpu.present!=true,pool=cpu"
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWebhook]:
    with LoopbackDnsServer() as dns:
        webhook = launch(
            tmp_path_factory.mktemp("guard"), trustme.CA(), dns, VIRTUAL_GPU_NODES=VIRTUAL
        )
        yield webhook
        webhook.process.stop()


def plain_review(api_version: str = "admission.k8s.io/v1") -> dict[str, Any]:
    """The GPU pod review of the fixtures, without the enable label."""
    document = review_document()
    document["apiVersion"] = api_version
    del document["request"]["object"]["metadata"]["labels"][ENABLE]
    return document


def post(running: RunningWebhook, body: bytes) -> Any:
    with running.client() as client:
        return running.process.post(client, GUARD_PATH, body)


def answer(running: RunningWebhook, document: dict[str, Any]) -> dict[str, Any]:
    response = post(running, json.dumps(document).encode())
    assert response.status_code == 200
    review: dict[str, Any] = response.json()
    assert review["apiVersion"] == document["apiVersion"]
    assert review["kind"] == "AdmissionReview"
    assert review["response"]["uid"] == document["request"]["uid"]
    result: dict[str, Any] = review["response"]
    return result


def patched(document: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    pod = copy.deepcopy(document["request"]["object"])
    operations = json.loads(base64.b64decode(result["patch"]))
    return jsonpatch.apply_patch(pod, operations)  # type: ignore[no-any-return]


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_a_plain_gpu_pod_gets_one_term_per_label_that_no_virtual_gpu_node_has(
    running: RunningWebhook, api_version: str
) -> None:
    document = plain_review(api_version)

    result = answer(running, document)

    assert result["allowed"] is True
    assert result["patchType"] == "JSONPatch"
    pod = patched(document, result)
    terms = pod["spec"]["affinity"]["nodeAffinity"][REQUIRED]["nodeSelectorTerms"]
    assert terms == [
        {"matchExpressions": [{"key": key, "operator": op, "values": [value]}]}
        for key, op, value in (
            ("gvirtus.io/frontend.allowed", "NotIn", "true"),
            ("nvidia.com/gpu.present", "In", "true"),
            ("pool", "NotIn", "cpu"),
        )
    ]


def test_the_patched_pod_sent_again_is_left_as_it_is(running: RunningWebhook) -> None:
    document = plain_review()
    document["request"]["object"] = patched(document, answer(running, document))

    result = answer(running, document)

    assert result == {"uid": document["request"]["uid"], "allowed": True}


def test_a_gvirtus_pod_sent_to_the_guard_is_left_alone(running: RunningWebhook) -> None:
    document = review_document()
    assert answer(running, document) == {"uid": document["request"]["uid"], "allowed": True}


@pytest.mark.parametrize(
    "change",
    [
        lambda request: request.update(object="a pod"),
        lambda request: request.pop("object"),
        lambda request: request["object"]["spec"].update(containers=["cuda"]),
    ],
    ids=["object not an object", "no object", "containers of strings"],
)
def test_a_malformed_review_is_admitted_unchecked_with_a_warning(
    running: RunningWebhook, change: Any
) -> None:
    document = plain_review()
    change(document["request"])

    result = answer(running, document)

    assert result["allowed"] is True
    assert "patch" not in result
    [warning] = result["warnings"]
    assert warning.startswith("GVirtuS: not checked for virtual GPUs")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [(b"{", "not valid JSON"), (b'{"apiVersion": "admission.k8s.io/v1"}', "no request.uid")],
)
def test_a_body_without_a_readable_uid_is_a_json_400(
    running: RunningWebhook, body: bytes, fragment: str
) -> None:
    response = post(running, body)
    assert response.status_code == 400
    assert fragment in response.json()["message"]


def test_an_update_is_admitted_unchanged(running: RunningWebhook) -> None:
    document = plain_review()
    document["request"]["operation"] = "UPDATE"
    assert answer(running, document) == {"uid": document["request"]["uid"], "allowed": True}


def test_each_guard_review_is_logged_with_its_route(running: RunningWebhook) -> None:
    document = plain_review()
    document["request"]["uid"] = "guard-log-uid"
    answer(running, document)
    deadline = time.monotonic() + 10
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline and not lines:
        lines = [line for line in running.log_lines() if line.get("uid") == "guard-log-uid"]
        time.sleep(0.05)
    [line] = lines
    assert (line["route"], line["outcome"]) == ("guard", "mutated")
