"""Backend resolution against a real DNS server on 127.0.0.1: the ready backend pods' IPv4
addresses behind the headless Service, cached, shared by concurrent callers, and a clear reason
when there is no address GVirtuS can use."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from gvirtus_kai_webhook.dns import BackendResolutionError, BackendResolver, choose_backend
from gvirtus_kai_webhook.metrics import DnsFailure, WebhookMetrics

from tests.dnsserver import LoopbackDnsServer
from tests.webhook.conftest import BACKEND_ADDRESS, settings_for
from tests.webhookproc import BACKEND_HOST

BACKENDS = ("10.244.1.7", "10.244.2.9", "10.244.3.4")


def resolver_for(server: LoopbackDnsServer, **overrides: object) -> BackendResolver:
    return BackendResolver(settings_for(server, **overrides))


def metric(metrics: WebhookMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


async def test_resolves_the_a_record(dns_server: LoopbackDnsServer) -> None:
    assert await resolver_for(dns_server).resolve() == (BACKEND_ADDRESS,)


async def test_resolves_every_ready_backend_of_the_headless_service(
    dns_server: LoopbackDnsServer,
) -> None:
    dns_server.set_a(BACKEND_HOST, *BACKENDS)
    assert sorted(await resolver_for(dns_server).resolve()) == sorted(BACKENDS)


async def test_a_repeated_record_counts_once(dns_server: LoopbackDnsServer) -> None:
    dns_server.set_a(BACKEND_HOST, BACKENDS[0], BACKENDS[0], BACKENDS[1])
    assert sorted(await resolver_for(dns_server).resolve()) == sorted(BACKENDS[:2])


async def test_exposes_the_host_it_resolves(dns_server: LoopbackDnsServer) -> None:
    assert resolver_for(dns_server).host == BACKEND_HOST


async def test_a_pick_is_one_of_the_ready_backends(dns_server: LoopbackDnsServer) -> None:
    dns_server.set_a(BACKEND_HOST, *BACKENDS)
    resolver = resolver_for(dns_server)
    picks = {await resolver.pick() for _ in range(200)}
    assert picks == set(BACKENDS)  # 200 picks of 3: missing one has odds of about 1e-35


def test_choices_are_uniform_over_the_ready_backends() -> None:
    # 6,000 draws over 3 addresses: each expected 2,000, standard deviation about 37; a bound
    # of 10 deviations fails a uniform choice with odds far below 1e-20, and any real bias.
    counts = Counter(choose_backend(BACKENDS) for _ in range(6000))
    assert set(counts) == set(BACKENDS)
    assert all(abs(count - 2000) < 370 for count in counts.values()), counts


def test_a_pod_keeps_its_backend_while_that_backend_is_ready() -> None:
    assert {choose_backend(BACKENDS, BACKENDS[1]) for _ in range(50)} == {BACKENDS[1]}


def test_a_pod_whose_backend_is_gone_gets_a_ready_one() -> None:
    gone = "10.244.9.9"
    assert {choose_backend(BACKENDS, gone) for _ in range(200)} == set(BACKENDS)


async def test_aaaa_only_is_refused_naming_ipv6_and_the_ipv4_need(
    dns_server: LoopbackDnsServer,
) -> None:
    dns_server.set_aaaa(BACKEND_HOST, "fd00::10")
    metrics = WebhookMetrics()
    with pytest.raises(BackendResolutionError) as failure:
        await BackendResolver(settings_for(dns_server), metrics).resolve()
    message = str(failure.value)
    assert BACKEND_HOST in message
    assert "only IPv6 addresses (fd00::10)" in message
    assert "GVirtuS needs an IPv4 server_address" in message
    assert failure.value.reason is DnsFailure.IPV6_ONLY
    assert metric(metrics, "gvirtus_webhook_dns_failures_total", reason="ipv6_only") == 1
    assert dns_server.query_count(BACKEND_HOST, "A") == 1
    assert dns_server.query_count(BACKEND_HOST, "AAAA") == 1


async def test_many_ipv6_addresses_are_named_in_part(dns_server: LoopbackDnsServer) -> None:
    dns_server.set_aaaa(BACKEND_HOST, *(f"fd00::{n}" for n in range(1, 41)))
    with pytest.raises(BackendResolutionError) as failure:
        await resolver_for(dns_server).resolve()
    assert "and 37 more" in str(failure.value)
    assert len(str(failure.value)) < 400


async def test_ipv6_records_of_a_dual_stack_backend_are_never_used(
    dns_server: LoopbackDnsServer,
) -> None:
    dns_server.set_dual_stack(BACKEND_HOST, a=list(BACKENDS), aaaa=["fd00::10", "fd00::11"])
    resolver = resolver_for(dns_server)
    assert sorted(await resolver.resolve()) == sorted(BACKENDS)
    assert {await resolver.pick() for _ in range(100)} <= set(BACKENDS)
    assert dns_server.query_count(BACKEND_HOST, "AAAA") == 0  # asked only to explain a refusal


async def test_answer_is_reused_within_its_ttl(dns_server: LoopbackDnsServer) -> None:
    metrics = WebhookMetrics()
    resolver = BackendResolver(settings_for(dns_server), metrics)
    for _ in range(5):
        assert await resolver.pick() == BACKEND_ADDRESS
    assert dns_server.query_count(BACKEND_HOST) == 1
    assert metric(metrics, "gvirtus_webhook_dns_cache_hits_total") == 4
    assert metric(metrics, "gvirtus_webhook_dns_queries_total", type="A") == 1


async def test_answer_is_queried_again_after_its_ttl_expires(
    dns_server: LoopbackDnsServer,
) -> None:
    dns_server.set_a(BACKEND_HOST, BACKEND_ADDRESS, ttl=1)
    resolver = resolver_for(dns_server)
    await resolver.resolve()
    dns_server.set_a(BACKEND_HOST, "10.96.0.99", ttl=1)
    await asyncio.sleep(1.2)
    assert await resolver.resolve() == ("10.96.0.99",)
    assert dns_server.query_count(BACKEND_HOST, "A") == 2


async def test_cache_lifetime_is_capped_by_the_setting(dns_server: LoopbackDnsServer) -> None:
    dns_server.set_a(BACKEND_HOST, BACKEND_ADDRESS, ttl=3600)
    resolver = resolver_for(dns_server, dns_cache_max_seconds=0.3)
    await resolver.resolve()
    await asyncio.sleep(0.5)
    await resolver.resolve()
    assert dns_server.query_count(BACKEND_HOST, "A") == 2


async def test_zero_cache_lifetime_queries_every_time(dns_server: LoopbackDnsServer) -> None:
    resolver = resolver_for(dns_server, dns_cache_max_seconds=0)
    await resolver.resolve()
    await resolver.resolve()
    assert dns_server.query_count(BACKEND_HOST, "A") == 2


async def test_concurrent_lookups_share_one_query(dns_server: LoopbackDnsServer) -> None:
    dns_server.set_a(BACKEND_HOST, *BACKENDS)
    resolver = resolver_for(dns_server)
    answers = await asyncio.gather(*(resolver.pick() for _ in range(50)))
    assert set(answers) <= set(BACKENDS)
    assert dns_server.query_count(BACKEND_HOST) == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup(
    dns_server: LoopbackDnsServer,
) -> None:
    resolver = resolver_for(dns_server)
    impatient = asyncio.create_task(resolver.resolve())
    patient = asyncio.create_task(resolver.resolve())
    await asyncio.sleep(0)
    impatient.cancel()
    assert await patient == (BACKEND_ADDRESS,)
    assert dns_server.query_count(BACKEND_HOST) == 1


async def test_nxdomain_says_no_ready_backend_was_found(dns_server: LoopbackDnsServer) -> None:
    # A headless Service without ready pods has no records (CoreDNS: NXDOMAIN).
    dns_server.set_nxdomain(BACKEND_HOST)
    with pytest.raises(BackendResolutionError) as failure:
        await resolver_for(dns_server).resolve()
    assert f"no ready GVirtuS backend was found behind {BACKEND_HOST}" in str(failure.value)
    assert "NXDOMAIN" in str(failure.value)
    assert failure.value.reason is DnsFailure.NXDOMAIN
    assert dns_server.query_count(BACKEND_HOST, "AAAA") == 0  # NXDOMAIN covers every type


async def test_no_records_says_no_ready_backend_was_found(dns_server: LoopbackDnsServer) -> None:
    dns_server.set_empty(BACKEND_HOST)
    with pytest.raises(BackendResolutionError) as failure:
        await resolver_for(dns_server).resolve()
    assert f"no ready GVirtuS backend was found behind {BACKEND_HOST}" in str(failure.value)
    assert "no A or AAAA record" in str(failure.value)
    assert failure.value.reason is DnsFailure.NO_ANSWER


async def test_unanswered_query_times_out_within_the_setting(
    dns_server: LoopbackDnsServer,
) -> None:
    dns_server.set_silent(BACKEND_HOST)
    started = time.monotonic()
    with pytest.raises(BackendResolutionError) as failure:
        await resolver_for(dns_server, dns_timeout_seconds=0.5).resolve()
    assert time.monotonic() - started < 5  # bounded, with slack for a loaded machine
    assert f"no DNS answer from {dns_server.nameserver} within 0.5s" in str(failure.value)
    assert failure.value.reason is DnsFailure.TIMEOUT


async def test_failures_are_counted_by_reason(dns_server: LoopbackDnsServer) -> None:
    dns_server.set_nxdomain(BACKEND_HOST)
    metrics = WebhookMetrics()
    resolver = BackendResolver(settings_for(dns_server), metrics)
    for _ in range(2):
        with pytest.raises(BackendResolutionError):
            await resolver.resolve()
    assert metric(metrics, "gvirtus_webhook_dns_failures_total", reason="nxdomain") == 2


async def test_failure_is_not_cached(dns_server: LoopbackDnsServer) -> None:
    dns_server.set_nxdomain(BACKEND_HOST)
    resolver = resolver_for(dns_server)
    with pytest.raises(BackendResolutionError):
        await resolver.resolve()
    dns_server.set_a(BACKEND_HOST, BACKEND_ADDRESS)  # a backend pod just became ready
    assert await resolver.resolve() == (BACKEND_ADDRESS,)
