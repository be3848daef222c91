"""Constants and helpers shared by the labeler tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

FRONTEND = "gvirtus.io/frontend.allowed"
BACKEND = "gvirtus.io/backend.allowed"
DEFAULTS = {FRONTEND: "true", BACKEND: "false"}
WAIT = 10.0  # generous bound for anything to happen on a loaded 2-core machine


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value; 0 when the labelled child was never touched."""
    return registry.get_sample_value(name, labels) or 0.0
