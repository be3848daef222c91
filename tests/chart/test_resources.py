"""Memory requests cover what the node agents use when idle, so nodes are not overcommitted."""

from __future__ import annotations

import re

import pytest

from tests.chart.conftest import container, render

# Idle resident set sizes measured by `make bench` (bench/labeler.py, bench/device_plugin.py).
IDLE_RSS_MIB = {"labeler": 48, "device-plugin": 53}
HEADROOM = 1.15  # allocator growth and a burst of watch events or gRPC calls
_UNITS_MIB = {"Mi": 1.0, "Gi": 1024.0, "Ki": 1 / 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}


def mebibytes(quantity: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi|Ki|M|G)?", quantity)
    assert match, f"unexpected memory quantity {quantity!r}"
    if match[2] is None:
        return float(match[1]) / 2**20
    return float(match[1]) * _UNITS_MIB[match[2]]


def test_memory_quantities_parse_in_binary_and_decimal_units() -> None:
    assert mebibytes("64Mi") == 64
    assert mebibytes("1Gi") == 1024
    assert mebibytes("67108864") == 64
    assert round(mebibytes("128M"), 2) == 122.07


@pytest.mark.parametrize("component", sorted(IDLE_RSS_MIB))
def test_node_agent_memory_request_covers_its_idle_rss(component: str) -> None:
    resources = container(render().one("DaemonSet", component))["resources"]
    assert mebibytes(resources["requests"]["memory"]) >= IDLE_RSS_MIB[component] * HEADROOM
