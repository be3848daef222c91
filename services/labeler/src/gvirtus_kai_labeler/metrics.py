"""Prometheus counters of the labeler, on a registry the caller owns (one per process or test)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.labels_added = Counter(
            "gvirtus_labeler_labels_added",
            "Labels the labeler added to nodes that lacked them.",
            ["key"],
            registry=registry,
        )
        self.conflicts = Counter(
            "gvirtus_labeler_conflicts",
            "Label writes refused with 409 Conflict because the node changed meanwhile.",
            registry=registry,
        )
        self.api_errors = Counter(
            "gvirtus_labeler_api_errors",
            "Failed Kubernetes API calls, by verb and HTTP code ('connection' when none came).",
            ["verb", "code"],
            registry=registry,
        )
        self.watch_restarts = Counter(
            "gvirtus_labeler_watch_restarts",
            "Watches started again, by resource and reason: expired (410 Gone), error (dropped"
            " or failed) or window.",
            ["resource", "reason"],
            registry=registry,
        )
