"""Resolve the GVirtuS backend Service to an IP address (GVirtuS does not accept host names).

Answers are cached for the record TTL, capped by ``dns_cache_max_seconds``, and concurrent lookups
share one query, so a burst of pod creations costs one DNS round trip, not one per pod.

Failures are not cached: a concurrent burst already shares the single failing query, and the next
admission after a failure should see a backend Service that was created a moment ago.
"""

from __future__ import annotations

import asyncio
import logging
import time

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from gvirtus_kai_webhook.metrics import DnsFailure, WebhookMetrics
from gvirtus_kai_webhook.settings import Settings

log = logging.getLogger(__name__)


class BackendResolutionError(Exception):
    """The backend address could not be resolved; ``str(exc)`` is the message shown to users."""

    def __init__(self, message: str, reason: DnsFailure) -> None:
        super().__init__(message)
        self.reason = reason


class BackendResolver:
    def __init__(self, settings: Settings, metrics: WebhookMetrics | None = None) -> None:
        self.host = settings.backend_host
        self._timeout = settings.dns_timeout_seconds
        self._cache_max = settings.dns_cache_max_seconds
        self._metrics = metrics or WebhookMetrics()
        # A dotted name is taken as fully qualified: the pod's resolv.conf has ndots:5, and
        # search-list expansion would cost several useless queries per lookup.
        if "." in self.host.rstrip("."):
            self._qname = dns.name.from_text(self.host)
            self._search = False
        else:
            self._qname = dns.name.from_text(self.host, origin=None)
            self._search = True
        self._resolver = dns.asyncresolver.Resolver(configure=not settings.dns_nameservers)
        if settings.dns_nameservers:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in settings.dns_nameservers
            ]
        self._resolver.lifetime = self._timeout
        self._cached: tuple[str, float] | None = None  # (address, monotonic expiry)
        self._inflight: asyncio.Task[str] | None = None

    async def resolve(self) -> str:
        """The backend IP address, from the cache or one shared DNS lookup."""
        cached = self._cached
        if cached is not None and time.monotonic() < cached[1]:
            self._metrics.dns_cache_hits.inc()
            return cached[0]
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._lookup())
            self._inflight.add_done_callback(self._lookup_done)
        # Shielded: a caller giving up (its request was cancelled) must not cancel the lookup
        # that other callers are waiting for.
        return await asyncio.shield(self._inflight)

    def _lookup_done(self, task: asyncio.Task[str]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter has already seen it

    async def _lookup(self) -> str:
        deadline = time.monotonic() + self._timeout
        try:
            try:
                answer = await self._query("A", deadline)
            except dns.resolver.NoAnswer:
                answer = await self._query("AAAA", deadline)
        except dns.resolver.NXDOMAIN:
            raise self._failure(DnsFailure.NXDOMAIN, "the name does not exist (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            raise self._failure(DnsFailure.NO_ANSWER, "the name has no A or AAAA record") from None
        except dns.exception.Timeout:
            raise self._failure(
                DnsFailure.TIMEOUT,
                f"no DNS answer from {self._nameserver_list()} within {self._timeout:g}s",
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise self._failure(
                DnsFailure.UNREACHABLE, f"no nameserver gave a usable answer ({exc})"
            ) from None
        except (OSError, dns.exception.DNSException) as exc:
            raise self._failure(DnsFailure.UNREACHABLE, f"DNS lookup failed ({exc})") from None

        rrset = answer.rrset
        assert rrset is not None  # resolve() raises NoAnswer instead of returning an empty answer
        address = str(rrset[0])
        ttl = min(float(rrset.ttl), self._cache_max)
        if ttl > 0:
            self._cached = (address, time.monotonic() + ttl)
        log.info("backend resolved", extra={"host": self.host, "address": address, "ttl": ttl})
        return address

    async def _query(self, record_type: str, deadline: float) -> dns.resolver.Answer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise dns.exception.Timeout
        self._metrics.dns_queries.labels(record_type).inc()
        return await self._resolver.resolve(
            self._qname, record_type, lifetime=remaining, search=self._search
        )

    def _nameserver_list(self) -> str:
        return ", ".join(
            f"{ns.address}:{ns.port}" if isinstance(ns, dns.nameserver.Do53Nameserver) else str(ns)
            for ns in self._resolver.nameservers
        )

    def _failure(self, reason: DnsFailure, detail: str) -> BackendResolutionError:
        self._metrics.dns_failures.labels(reason.value).inc()
        log.warning(
            "backend resolution failed",
            extra={"host": self.host, "reason": reason.value, "detail": detail},
        )
        return BackendResolutionError(
            f"cannot resolve the GVirtuS backend Service {self.host}: {detail}", reason
        )
