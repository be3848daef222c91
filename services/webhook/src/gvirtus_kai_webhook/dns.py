"""Resolve the headless Service of the GVirtuS backend pods to their IPv4 addresses.

GVirtuS accepts only a dotted-quad IPv4 ``server_address``, so only A records are used; AAAA
records are asked for only to explain a backend that has no IPv4 address. A headless Service
answers with the addresses of its ready pods, so no answer means no ready backend.

Answers are cached for the record TTL, capped by ``dns_cache_max_seconds``, and concurrent lookups
share one query, so a burst of pod creations costs one DNS round trip, not one per pod. Each pod
is then pinned to one of the cached addresses, chosen uniformly at random.

Failures are not cached: a concurrent burst already shares the single failing query, and the next
admission after a failure should see a backend that became ready a moment ago.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from gvirtus_kai_common.logs import clip

from gvirtus_kai_webhook.metrics import DnsFailure, WebhookMetrics
from gvirtus_kai_webhook.settings import Settings

log = logging.getLogger(__name__)
# IPv6 addresses named in a denial: enough to recognise the backend, not a flood.
SHOWN_ADDRESSES = 3


def choose_backend(addresses: tuple[str, ...], current: str | None = None) -> str:
    """``current`` (the address the pod already names) while it is ready, so the webhook is
    idempotent on its own output; else one of ``addresses``, uniformly at random, so pods spread
    evenly over the ready backends."""
    if current is not None and current in addresses:
        return current
    return secrets.choice(addresses)


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
        # (addresses, monotonic expiry)
        self._cached: tuple[tuple[str, ...], float] | None = None
        self._inflight: asyncio.Task[tuple[str, ...]] | None = None

    async def pick(self, current: str | None = None) -> str:
        """One ready backend pod's IPv4 address (see ``choose_backend``)."""
        return choose_backend(await self.resolve(), current)

    async def resolve(self) -> tuple[str, ...]:
        """The ready backend pods' IPv4 addresses, from the cache or one shared DNS lookup."""
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

    def _lookup_done(self, task: asyncio.Task[tuple[str, ...]]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # mark retrieved: every waiter has already seen it

    async def _lookup(self) -> tuple[str, ...]:
        deadline = time.monotonic() + self._timeout
        try:
            try:
                answer = await self._query("A", deadline)
            except dns.resolver.NoAnswer:
                raise await self._no_ipv4(deadline) from None
        except dns.resolver.NXDOMAIN:
            raise self._no_backend(
                DnsFailure.NXDOMAIN,
                "the name does not exist (NXDOMAIN: no such Service, or no pod of it is ready)",
            ) from None
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
        # A repeated record would weigh its pod twice in the uniform choice.
        addresses = tuple(dict.fromkeys(str(record) for record in rrset))
        ttl = min(float(rrset.ttl), self._cache_max)
        if ttl > 0:
            self._cached = (addresses, time.monotonic() + ttl)
        log.info(
            "backend resolved",
            extra={
                "host": self.host,
                "count": len(addresses),
                "addresses": clip(",".join(addresses)),
                "ttl": ttl,
            },
        )
        return addresses

    async def _no_ipv4(self, deadline: float) -> BackendResolutionError:
        """The error for a name without A records: IPv6 only, or no ready pod at all."""
        try:
            answer = await self._query("AAAA", deadline)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return self._no_backend(
                DnsFailure.NO_ANSWER, "the name has no A or AAAA record (no pod of it is ready)"
            )
        rrset = answer.rrset
        assert rrset is not None
        shown = ", ".join(str(record) for record in list(rrset)[:SHOWN_ADDRESSES])
        more = len(rrset) - SHOWN_ADDRESSES
        if more > 0:
            shown += f" and {more} more"
        return self._error(
            DnsFailure.IPV6_ONLY,
            f"the GVirtuS backend {self.host} has only IPv6 addresses ({shown}); GVirtuS needs "
            "an IPv4 server_address, so no pod can be pinned to it (give the backend pods "
            "IPv4 addresses: a dual-stack or IPv4 cluster)",
        )

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

    def _no_backend(self, reason: DnsFailure, detail: str) -> BackendResolutionError:
        return self._error(
            reason, f"no ready GVirtuS backend was found behind {self.host}: {detail}"
        )

    def _failure(self, reason: DnsFailure, detail: str) -> BackendResolutionError:
        return self._error(
            reason, f"cannot resolve the GVirtuS backend Service {self.host}: {detail}"
        )

    def _error(self, reason: DnsFailure, message: str) -> BackendResolutionError:
        self._metrics.dns_failures.labels(reason.value).inc()
        log.warning(
            "backend resolution failed",
            extra={"host": self.host, "reason": reason.value, "detail": message},
        )
        return BackendResolutionError(message, reason)
