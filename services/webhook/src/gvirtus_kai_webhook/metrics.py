"""Prometheus metrics of the webhook, kept in one registry per server instance.

A registry per instance (instead of the process-wide default) lets tests and the demo run several
webhooks in one process without duplicate-metric errors.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Outcome(StrEnum):
    ALLOWED = "allowed"  # admitted unchanged (not a GVirtuS pod, not a pod CREATE)
    MUTATED = "mutated"  # admitted with a JSON Patch
    DENIED = "denied"  # refused: the pod cannot be mutated or the backend cannot be resolved
    # The review itself was unusable or the webhook failed: refused (the guard admits unchecked).
    ERROR = "error"


class DnsFailure(StrEnum):
    NXDOMAIN = "nxdomain"
    NO_ANSWER = "no_answer"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    IPV6_ONLY = "ipv6_only"  # the backend has addresses, but none GVirtuS can use


# Admission latency is sub-millisecond when the backend address is cached and up to the DNS
# timeout when it is not, so the buckets span both.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.admissions = Counter(
            "gvirtus_webhook_admissions",
            "Admission reviews answered, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.admission_duration = Histogram(
            "gvirtus_webhook_admission_duration_seconds",
            "Time from the request body being read to the answer being ready.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dns_queries = Counter(
            "gvirtus_webhook_dns_queries",
            "DNS queries sent for the backend Service, by record type.",
            ["type"],
            registry=self.registry,
        )
        self.dns_cache_hits = Counter(
            "gvirtus_webhook_dns_cache_hits",
            "Backend address lookups answered from the cache.",
            registry=self.registry,
        )
        self.dns_failures = Counter(
            "gvirtus_webhook_dns_failures",
            "Backend address lookups that gave no usable address, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.tls_reloads = Counter(
            "gvirtus_webhook_tls_reloads",
            "Serving certificate reloads after the files changed, by result.",
            ["result"],
            registry=self.registry,
        )
        self.connections_open = Gauge(
            "gvirtus_webhook_connections_open",
            "HTTPS connections open now (idle keep-alive ones included).",
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "gvirtus_webhook_connections_refused",
            "HTTPS connections closed at once because GVIRTUS_KAI_MAX_CONNECTIONS were open.",
            registry=self.registry,
        )
        # Export every series from the start, so dashboards and alerts see zeros, not gaps.
        for outcome in Outcome:
            self.admissions.labels(outcome.value)
        for record_type in ("A", "AAAA"):
            self.dns_queries.labels(record_type)
        for reason in DnsFailure:
            self.dns_failures.labels(reason.value)
        for result in ("success", "failure"):
            self.tls_reloads.labels(result)
