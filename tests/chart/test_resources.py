"""Every container the chart runs declares what it needs and what it may use, and may use at least
what it asks for: the scheduler places it by its requests, and a limit below a request would make
the pod unschedulable or kill it for using what it was promised."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.chart.conftest import SCENARIOS, pod_spec, pod_workloads, render

RESOURCES = ("cpu", "memory")
_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}


def quantity(resource: str, text: str | int | float) -> float:
    """A Kubernetes quantity in cores or bytes."""
    value = str(text)
    if resource == "cpu":
        match = re.fullmatch(r"(\d+(?:\.\d+)?)(m)?", value)
        assert match, f"unexpected cpu quantity {value!r}"
        return float(match[1]) / (1000 if match[2] else 1)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G)?", value)
    assert match, f"unexpected memory quantity {value!r}"
    return float(match[1]) * (_MEMORY_UNITS[match[2]] if match[2] else 1)


def test_quantities_parse_in_binary_and_decimal_units() -> None:
    assert quantity("memory", "64Mi") == 64 * 2**20
    assert quantity("memory", "128M") == 128e6
    assert quantity("memory", "67108864") == 64 * 2**20
    assert quantity("cpu", "500m") == 0.5
    assert quantity("cpu", "2") == 2


def containers(scenario: str | None) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for workload in pod_workloads(render(scenario)):
        spec = pod_spec(workload)
        for item in [*spec.get("initContainers", []), *spec["containers"]]:
            found.append(
                (f"{workload['kind']}/{workload['metadata']['name']}/{item['name']}", item)
            )
    return found


@pytest.mark.parametrize("scenario", [None, *SCENARIOS])
def test_every_container_requests_and_limits_cpu_and_memory(scenario: str | None) -> None:
    found = containers(scenario)
    assert found
    missing = [
        f"{where} {kind}.{resource}"
        for where, item in found
        for kind in ("requests", "limits")
        for resource in RESOURCES
        if resource not in (item.get("resources") or {}).get(kind, {})
    ]
    assert not missing


@pytest.mark.parametrize("scenario", [None, *SCENARIOS])
def test_no_limit_is_below_its_request(scenario: str | None) -> None:
    below = [
        f"{where} {resource}"
        for where, item in containers(scenario)
        for resource in RESOURCES
        if quantity(resource, item["resources"]["limits"][resource])
        < quantity(resource, item["resources"]["requests"][resource])
    ]
    assert not below
