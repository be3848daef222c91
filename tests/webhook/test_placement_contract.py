"""The placement contract of the real ``gvirtus-webhook`` process over HTTPS, with a real DNS
server on 127.0.0.1 whose query log shows which reviews looked the backend up.

- ``placement=controller``: a pod (mount or sed) gets the scheduling gate and no address, and
  no DNS query is made for it (so a DNS outage refuses no pod);
- ``placement=dns``: the pod is pinned to one ready backend pod, one of the headless Service's A
  records chosen uniformly at random; none ready, or IPv6 only, is a denial that says why.
"""

from __future__ import annotations

import base64
import copy
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import jsonpatch
import pytest
import trustme
from gvirtus_kai_common.gvirtus import BACKEND_ANNOTATION, BACKEND_GATE, PROPERTIES_ANNOTATION

from tests.dnsserver import LoopbackDnsServer
from tests.webhook.conftest import RunningWebhook, launch, review_document
from tests.webhook.pods import assert_valid_pod
from tests.webhookproc import BACKEND_HOST

BACKENDS = ("10.244.1.7", "10.244.2.9", "10.244.3.4")
BACKEND_PORT = "9999"  # the default: the backend pods' container port


@pytest.fixture(scope="module")
def dns() -> Iterator[LoopbackDnsServer]:
    with LoopbackDnsServer() as server:
        yield server


@pytest.fixture
def backends(dns: LoopbackDnsServer) -> LoopbackDnsServer:
    """The headless Service answers with three ready backend pods (TTL 0: every lookup asks)."""
    dns.set_a(BACKEND_HOST, *BACKENDS, ttl=0)
    return dns


def start(
    tmp_path_factory: pytest.TempPathFactory, dns: LoopbackDnsServer, **settings: str
) -> Iterator[RunningWebhook]:
    """A webhook process that asks ``dns``, stopped when the generator is closed."""
    webhook = launch(tmp_path_factory.mktemp("webhook"), trustme.CA(), dns, None, **settings)
    yield webhook
    webhook.process.stop()


@pytest.fixture(scope="module")
def gating(
    tmp_path_factory: pytest.TempPathFactory, dns: LoopbackDnsServer
) -> Iterator[RunningWebhook]:
    """The chart's default: placement=controller."""
    yield from start(tmp_path_factory, dns, PLACEMENT="controller")


@pytest.fixture(scope="module")
def pinning(
    tmp_path_factory: pytest.TempPathFactory, dns: LoopbackDnsServer
) -> Iterator[RunningWebhook]:
    """The chart with controller.enabled=false: placement=dns."""
    yield from start(tmp_path_factory, dns, PLACEMENT="dns", DNS_CACHE_MAX_SECONDS="0")


def review_of(pod: dict[str, Any], uid: str = "8c1e6a3b-0000-4000-8000-000000000001") -> Any:
    document = review_document()
    document["request"]["uid"] = uid
    document["request"]["object"] = pod
    return document


def gpu_pod() -> dict[str, Any]:
    pod: dict[str, Any] = review_document()["request"]["object"]
    return pod


def sed_pod() -> dict[str, Any]:
    pod = gpu_pod()
    pod["metadata"].setdefault("annotations", {})["gvirtus.io/strategy"] = "sed"
    pod["spec"]["containers"][0]["command"] = ["python3", "train.py"]
    return pod


def send(webhook: RunningWebhook, client: httpx.Client, pod: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview answer's ``response`` for a CREATE of ``pod``."""
    review = review_of(pod)
    http = webhook.process.post(client, "/mutate", json.dumps(review).encode())
    assert http.status_code == 200, http.text
    answer: dict[str, Any] = http.json()["response"]
    assert answer["uid"] == review["request"]["uid"]
    return answer


def admitted(webhook: RunningWebhook, client: httpx.Client, pod: dict[str, Any]) -> Any:
    """The pod as the API server would store it after the webhook's patch."""
    answer = send(webhook, client, pod)
    assert answer["allowed"], answer
    operations = json.loads(base64.b64decode(answer.get("patch", "") or "W10="))
    return jsonpatch.apply_patch(copy.deepcopy(pod), operations)


def gates(pod: dict[str, Any]) -> list[str]:
    return [gate["name"] for gate in pod["spec"].get("schedulingGates") or []]


def pinned_to(pod: dict[str, Any]) -> str:
    """The backend address a pinned pod names, checked against its frontend config."""
    value: str = pod["metadata"]["annotations"][BACKEND_ANNOTATION]
    address, _, port = value.rpartition(":")
    assert port == BACKEND_PORT
    if PROPERTIES_ANNOTATION in pod["metadata"]["annotations"]:
        properties = json.loads(pod["metadata"]["annotations"][PROPERTIES_ANNOTATION])
        endpoint = properties["communicator"][0]["endpoint"]
        assert (endpoint["server_address"], endpoint["port"]) == (address, BACKEND_PORT)
    else:  # sed: the wrapper reads the annotation, resolved by the kubelet at container start
        [app] = pod["spec"]["containers"]
        [source] = [e["valueFrom"] for e in app["env"] if e["name"] == "GVIRTUS_KAI_BACKEND"]
        assert source["fieldRef"]["fieldPath"] == f"metadata.annotations['{BACKEND_ANNOTATION}']"
        assert address not in app["command"][2]
    return address


def a_queries(webhook: RunningWebhook) -> float:
    """The webhook's own count of A queries sent, from its /metrics."""
    with webhook.client() as client:
        text = webhook.process.get(client, "/metrics").text
    [line] = [
        ln
        for ln in text.splitlines()
        if ln.startswith('gvirtus_webhook_dns_queries_total{type="A"}')
    ]
    return float(line.split()[-1])


# --- placement=controller: gated, no address, no DNS ------------------------------------------


def test_a_gated_pod_has_the_gate_and_no_address_and_no_lookup_was_made(
    gating: RunningWebhook, backends: LoopbackDnsServer
) -> None:
    before = backends.query_count(BACKEND_HOST)
    with gating.client() as client:
        pod = admitted(gating, client, gpu_pod())
    assert gates(pod) == [BACKEND_GATE]
    annotations = pod["metadata"].get("annotations") or {}
    assert BACKEND_ANNOTATION not in annotations
    assert PROPERTIES_ANNOTATION not in annotations
    assert_valid_pod(pod)
    assert backends.query_count(BACKEND_HOST) == before  # the DNS server's log: nothing asked


def test_a_dns_outage_refuses_no_gated_pod(gating: RunningWebhook, dns: LoopbackDnsServer) -> None:
    dns.set_silent(BACKEND_HOST)  # any lookup would wait out the timeout and be denied
    before = dns.query_count(BACKEND_HOST), a_queries(gating)
    with gating.client() as client:
        pods = [admitted(gating, client, gpu_pod()) for _ in range(20)]
    assert all(gates(pod) == [BACKEND_GATE] for pod in pods)
    assert (dns.query_count(BACKEND_HOST), a_queries(gating)) == before


def test_a_gated_pod_resent_gives_an_empty_patch(
    gating: RunningWebhook, backends: LoopbackDnsServer
) -> None:
    with gating.client() as client:
        once = admitted(gating, client, gpu_pod())
        again = send(gating, client, once)
    assert again["allowed"]
    assert "patch" not in again


def test_a_copy_of_an_assigned_pod_is_gated_again(
    gating: RunningWebhook, backends: LoopbackDnsServer
) -> None:
    assigned = gpu_pod()
    assigned["metadata"]["annotations"] = {
        BACKEND_ANNOTATION: f"{BACKENDS[0]}:{BACKEND_PORT}",
        PROPERTIES_ANNOTATION: '{"communicator":[]}',
    }
    with gating.client() as client:
        copy_ = admitted(gating, client, assigned)
    assert gates(copy_) == [BACKEND_GATE]
    assert not {BACKEND_ANNOTATION, PROPERTIES_ANNOTATION} & set(
        copy_["metadata"].get("annotations") or {}
    )


def test_a_sed_pod_is_gated_with_no_lookup_too(
    gating: RunningWebhook, backends: LoopbackDnsServer
) -> None:
    before = backends.query_count(BACKEND_HOST, "A")
    with gating.client() as client:
        pod = admitted(gating, client, sed_pod())
    assert gates(pod) == [BACKEND_GATE]
    assert BACKEND_ANNOTATION not in (pod["metadata"].get("annotations") or {})
    assert_valid_pod(pod)
    assert backends.query_count(BACKEND_HOST, "A") == before


# --- placement=dns: pinned to one ready IPv4 backend ------------------------------------------


@pytest.mark.parametrize("make_pod", [gpu_pod, sed_pod], ids=["mount", "sed"])
def test_pods_are_pinned_uniformly_to_the_ready_backends(
    pinning: RunningWebhook, backends: LoopbackDnsServer, make_pod: Any
) -> None:
    with pinning.client() as client:
        chosen = Counter(pinned_to(admitted(pinning, client, make_pod())) for _ in range(300))
    assert set(chosen) == set(BACKENDS)  # only ever one of the A records
    # Each expects 100 (standard deviation about 8): a bound of 50 fails a uniform choice with
    # odds below 1e-9, and any choice that favours a backend noticeably.
    assert all(50 < count < 150 for count in chosen.values()), chosen


def test_a_pinned_pod_is_a_valid_pod_with_no_gate(
    pinning: RunningWebhook, backends: LoopbackDnsServer
) -> None:
    gated_copy = gpu_pod()
    gated_copy["spec"]["schedulingGates"] = [{"name": BACKEND_GATE}]
    with pinning.client() as client:
        pod = admitted(pinning, client, gated_copy)
    assert gates(pod) == []
    assert pinned_to(pod) in BACKENDS
    assert_valid_pod(pod)


def test_a_pinned_pod_resent_keeps_its_backend_and_gives_an_empty_patch(
    pinning: RunningWebhook, backends: LoopbackDnsServer
) -> None:
    with pinning.client() as client:
        for make_pod in (gpu_pod, sed_pod):
            once = admitted(pinning, client, make_pod())
            again = send(pinning, client, once)
            assert again["allowed"]
            assert "patch" not in again


def test_only_ipv4_records_are_ever_pinned_on_a_dual_stack_backend(
    pinning: RunningWebhook, dns: LoopbackDnsServer
) -> None:
    dns.set_dual_stack(BACKEND_HOST, a=list(BACKENDS[:2]), aaaa=["fd00::10", "fd00::11"], ttl=0)
    with pinning.client() as client:
        chosen = {pinned_to(admitted(pinning, client, gpu_pod())) for _ in range(40)}
    assert chosen == set(BACKENDS[:2])


@pytest.mark.parametrize("answer", ["nxdomain", "empty"])
def test_no_ready_backend_denies_saying_so(
    pinning: RunningWebhook, dns: LoopbackDnsServer, answer: str
) -> None:
    if answer == "nxdomain":
        dns.set_nxdomain(BACKEND_HOST)  # CoreDNS, for a headless Service without ready pods
    else:
        dns.set_empty(BACKEND_HOST)
    with pinning.client() as client:
        result = send(pinning, client, gpu_pod())
    assert result["allowed"] is False
    assert result["status"]["code"] == 503
    assert (
        f"no ready GVirtuS backend was found behind {BACKEND_HOST}" in (result["status"]["message"])
    )
    assert "patch" not in result


def test_an_ipv6_only_backend_denies_saying_gvirtus_needs_ipv4(
    pinning: RunningWebhook, dns: LoopbackDnsServer
) -> None:
    dns.set_aaaa(BACKEND_HOST, "fd00::10")
    with pinning.client() as client:
        result = send(pinning, client, gpu_pod())
    assert result["allowed"] is False
    message = result["status"]["message"]
    assert "has only IPv6 addresses (fd00::10)" in message
    assert "GVirtuS needs an IPv4 server_address" in message
    assert "patch" not in result  # fd00::10 is written nowhere


def test_a_sed_pod_with_no_ready_backend_is_denied_under_dns_placement_and_gated_otherwise(
    pinning: RunningWebhook, gating: RunningWebhook, dns: LoopbackDnsServer
) -> None:
    dns.set_empty(BACKEND_HOST)
    with pinning.client() as client:
        refused = send(pinning, client, sed_pod())
    with gating.client() as client:
        gated = send(gating, client, sed_pod())
    assert refused["allowed"] is False
    assert "no ready GVirtuS backend was found" in refused["status"]["message"]
    assert gated["allowed"] is True
