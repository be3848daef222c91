"""The controller's Prometheus metrics."""

from __future__ import annotations

import time
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
        self.load_polls = Counter(
            "gvirtus_controller_load_polls",
            "Polls of the backends' agents (GET /load), by outcome (ok, timeout, invalid, ...).",
            ["outcome"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "gvirtus_controller_watch_restarts",
            "Watches started again, by resource and reason (expired, error, window).",
            ["resource", "reason"],
            registry=r,
        )

    def watch(
        self,
        placement: Placement,
        leading: Callable[[], bool],
        placeholders: Callable[[], int] = lambda: 0,
    ) -> None:
        """Publish the placement state; read when scraped, so it costs nothing per event."""
        self.registry.register(_StateCollector(placement, leading, placeholders))


class _StateCollector(Collector):
    def __init__(
        self, placement: Placement, leading: Callable[[], bool], placeholders: Callable[[], int]
    ) -> None:
        self._placement = placement
        self._leading = leading
        self._placeholders = placeholders

    def collect(self) -> Iterator[Metric]:
        placement = self._placement
        yield GaugeMetricFamily(
            "gvirtus_controller_pods_waiting",
            "GVirtuS pods gated until a backend has room.",
            value=placement.waiting_count,
        )
        yield GaugeMetricFamily(
            "gvirtus_controller_oldest_wait_seconds",
            "Seconds the longest-waiting GVirtuS pod has waited since its creation.",
            value=placement.oldest_wait(time.time()),
        )
        yield GaugeMetricFamily(
            "gvirtus_controller_placeholders",
            "Placeholder pods asking a cluster autoscaler for backend nodes.",
            value=self._placeholders(),
        )
        yield from _load_families(placement)
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


def _load_families(placement: Placement) -> Iterator[Metric]:
    clients = GaugeMetricFamily(
        "gvirtus_controller_backend_clients",
        "Distinct client addresses connected to each backend, as its agent measured.",
        labels=["backend"],
    )
    pending = GaugeMetricFamily(
        "gvirtus_controller_backend_pending_pods",
        "Pods pinned to each backend that its agent does not see connected (yet).",
        labels=["backend"],
    )
    utilization = GaugeMetricFamily(
        "gvirtus_controller_backend_gpu_utilization_ratio",
        "Mean GPU utilisation of each backend (0..1), as its agent measured.",
        labels=["backend"],
    )
    unknown = GaugeMetricFamily(
        "gvirtus_controller_backend_load_unknown",
        "1 when a backend's agent gave no valid answer to the last poll (ranked by pinned pods).",
        labels=["backend"],
    )
    for backend in placement.backends:
        address = backend.address
        load = placement.measured(address)
        unknown.add_metric([address], 1 if load is None else 0)
        if load is not None:
            clients.add_metric([address], len(load.clients))
            pending.add_metric([address], placement.pending(address))
            utilization.add_metric([address], load.mean_gpu_utilization)
    yield from (clients, pending, utilization, unknown)
