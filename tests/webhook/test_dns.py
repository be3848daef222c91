"""Backend Service resolution against a real DNS server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import pytest
from gvirtus_kai_webhook.dns import BackendResolutionError, BackendResolver
from gvirtus_kai_webhook.metrics import DnsFailure, WebhookMetrics

from tests.dnsserver import LoopbackDnsServer
from tests.webhook.conftest import BACKEND_ADDRESS, settings_for
from tests.webhookproc import BACKEND_HOST


def resolver_for(server: LoopbackDnsServer, **overrides: object) -> BackendResolver:
    return BackendResolver(settings_for(server, **overrides))


def metric(metrics: WebhookMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


async def test_resolves_the_backend_a_record(dns_server: LoopbackDnsServer) -> None:
    assert await resolver_for(dns_server).resolve() == BACKEND_ADDRESS


async def test_exposes_the_host_it_resolves(dns_server: LoopbackDnsServer) -> None:
    assert resolver_for(dns_server).host == BACKEND_HOST


async def test_falls_back_to_aaaa_when_there_is_no_a_record(
    dns_server: LoopbackDnsServer,
) -> None:
    dns_server.set_aaaa(BACKEND_HOST, "fd00:10:96::42")
    assert await resolver_for(dns_server).resolve() == "fd00:10:96::42"
    assert dns_server.query_count(BACKEND_HOST, "A") == 1
    assert dns_server.query_count(BACKEND_HOST, "AAAA") == 1


async def test_answer_is_reused_within_its_ttl(dns_server: LoopbackDnsServer) -> None:
    metrics = WebhookMetrics()
    resolver = BackendResolver(settings_for(dns_server), metrics)
    for _ in range(5):
        assert await resolver.resolve() == BACKEND_ADDRESS
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
    assert await resolver.resolve() == "10.96.0.99"
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
    resolver = resolver_for(dns_server)
    answers = await asyncio.gather(*(resolver.resolve() for _ in range(50)))
    assert set(answers) == {BACKEND_ADDRESS}
    assert dns_server.query_count(BACKEND_HOST) == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_lookup(
    dns_server: LoopbackDnsServer,
) -> None:
    resolver = resolver_for(dns_server)
    impatient = asyncio.create_task(resolver.resolve())
    patient = asyncio.create_task(resolver.resolve())
    await asyncio.sleep(0)
    impatient.cancel()
    assert await patient == BACKEND_ADDRESS
    assert dns_server.query_count(BACKEND_HOST) == 1


async def test_nxdomain_names_the_host_and_the_reason(dns_server: LoopbackDnsServer) -> None:
    dns_server.set_nxdomain(BACKEND_HOST)
    with pytest.raises(BackendResolutionError) as failure:
        await resolver_for(dns_server).resolve()
    assert BACKEND_HOST in str(failure.value)
    assert "does not exist (NXDOMAIN)" in str(failure.value)
    assert failure.value.reason is DnsFailure.NXDOMAIN
    assert dns_server.query_count(BACKEND_HOST, "AAAA") == 0  # NXDOMAIN covers every type


async def test_name_without_addresses_is_reported_as_such(dns_server: LoopbackDnsServer) -> None:
    dns_server.set_empty(BACKEND_HOST)
    with pytest.raises(BackendResolutionError, match="has no A or AAAA record") as failure:
        await resolver_for(dns_server).resolve()
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
    dns_server.set_a(BACKEND_HOST, BACKEND_ADDRESS)  # the backend Service was just created
    assert await resolver.resolve() == BACKEND_ADDRESS
