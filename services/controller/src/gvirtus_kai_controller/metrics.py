"""The controller's Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gvirtus_kai_controller.placement import Placement

# Pod creation to gate removal: from a fraction of a second (a backend is free) to many
# minutes (pods wait for a backend to start or for room).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.assignment_latency = Histogram(
            "gvirtus_controller_assignment_latency_seconds",
            "From pod creation to its scheduling gate being removed.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.assignments = Counter(
            "gvirtus_controller_assignments", "Backends assigned to pods.", registry=r
        )
        self.conflicts = Counter(
            "gvirtus_controller_conflicts",
            "Assignments refused with 409 because the pod changed since it was read.",
            registry=r,
        )
        self.backends_lost = Counter(
            "gvirtus_controller_backends_lost",
            "Backends that stopped being ready (endpoint gone or not ready).",
            registry=r,
        )
        self.evictions = Counter(
            "gvirtus_controller_evictions",
            "Evictions of pods whose backend was lost, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.api_errors = Counter(
            "gvirtus_controller_api_errors",
            "Failed Kubernetes API calls, by verb and status code.",
            ["verb", "code"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "gvirtus_controller_watch_restarts",
            "Watches started again, by resource and reason (expired, error, window).",
            ["resource", "reason"],
            registry=r,
        )

    def watch(self, placement: Placement, leading: Callable[[], bool]) -> None:
        """Publish the placement state; read when scraped, so it costs nothing per event."""
        self.registry.register(_StateCollector(placement, leading))


class _StateCollector(Collector):
    def __init__(self, placement: Placement, leading: Callable[[], bool]) -> None:
        self._placement = placement
        self._leading = leading

    def collect(self) -> Iterator[Metric]:
        placement = self._placement
        yield GaugeMetricFamily(
            "gvirtus_controller_pods_waiting",
            "GVirtuS pods gated until a backend has room.",
            value=placement.waiting_count,
        )
        per_backend = GaugeMetricFamily(
            "gvirtus_controller_backend_pods",
            "Live GVirtuS pods assigned to each backend (ip:port).",
            labels=["backend"],
        )
        for address, count in sorted(placement.loads().items()):
            per_backend.add_metric([address], count)
        yield per_backend
        yield GaugeMetricFamily(
            "gvirtus_controller_backends_ready",
            "Ready backends with an IPv4 address and the named port.",
            value=len(placement.backends),
        )
        yield GaugeMetricFamily(
            "gvirtus_controller_leading",
            "1 while this replica assigns backends (the leader, or no election).",
            value=1 if self._leading() else 0,
        )
