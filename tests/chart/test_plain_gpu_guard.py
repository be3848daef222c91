"""The guard entry of the MutatingWebhookConfiguration, as rendered: which pods and namespaces it
sends to the webhook's guard route, and that the webhook's idea of the virtual-GPU nodes is the
device plugin's own node selection."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest
from gvirtus_kai_webhook.app import GUARD_PATH, MUTATE_PATH
from gvirtus_kai_webhook.gpu_guard import parse_node_requirements

from tests.chart.conftest import SCENARIOS, Manifests, env_of, pod_spec, render

GUARD = "plain-gpu-pods.gvirtus.io"


def entries(manifests: Manifests) -> dict[str, dict[str, Any]]:
    configuration = manifests.one("MutatingWebhookConfiguration")
    return {hook["name"]: hook for hook in configuration["webhooks"]}


def gvirtus_and_guard(manifests: Manifests) -> tuple[dict[str, Any], dict[str, Any]]:
    hooks = entries(manifests)
    assert set(hooks) == {"pods.gvirtus.io", GUARD}
    return hooks["pods.gvirtus.io"], hooks[GUARD]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels and In/NotIn/Exists/DoesNotExist) against ``labels``."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.get("matchExpressions") or []:
        key, operator = requirement["key"], requirement["operator"]
        values = requirement.get("values") or []
        matched = {
            "In": key in labels and labels.get(key) in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def rendered_enable_label(manifests: Manifests) -> str:
    label: str = env_of(manifests.one("Deployment", "webhook"))["GVIRTUS_KAI_ENABLE_LABEL"]
    return label


@pytest.mark.parametrize("scenario", [None, "custom-labels-values.yaml"])
def test_every_pod_goes_to_exactly_one_of_the_two_entries(scenario: str | None) -> None:
    manifests = render(scenario)
    gvirtus, guard = gvirtus_and_guard(manifests)
    enable = rendered_enable_label(manifests)

    for labels in ({}, {enable: "true"}, {enable: "false"}, {enable: ""}, {"app": "x"}):
        chosen = [
            selects(gvirtus["objectSelector"], labels),
            selects(guard["objectSelector"], labels),
        ]
        assert chosen.count(True) == 1, labels
        assert chosen[0] == (labels.get(enable) == "true"), labels


@pytest.mark.parametrize("scenario", [None, "custom-labels-values.yaml"])
def test_the_guard_skips_the_namespaces_the_gvirtus_entry_skips(scenario: str | None) -> None:
    gvirtus, guard = gvirtus_and_guard(render(scenario, {"webhook.excludeNamespaces": ["batch"]}))
    assert guard["namespaceSelector"] == gvirtus["namespaceSelector"]
    assert guard["rules"] == gvirtus["rules"]


def test_the_guard_calls_the_same_service_with_the_same_trust_at_the_guard_route() -> None:
    gvirtus, guard = gvirtus_and_guard(render())
    assert (
        gvirtus["clientConfig"]["service"]["path"],
        guard["clientConfig"]["service"]["path"],
    ) == (
        MUTATE_PATH,
        GUARD_PATH,
    )
    guard["clientConfig"]["service"]["path"] = MUTATE_PATH
    assert guard["clientConfig"] == gvirtus["clientConfig"]


def test_the_guard_never_blocks_a_pod_whatever_the_gvirtus_failure_policy() -> None:
    _, guard = gvirtus_and_guard(render(values={"webhook.failurePolicy": "Fail"}))
    assert guard["failurePolicy"] == "Ignore"
    assert guard["sideEffects"] == "None"


@pytest.mark.parametrize("scenario", [None, "custom-labels-values.yaml"])
def test_the_match_condition_asks_about_the_charts_gpu_resource(scenario: str | None) -> None:
    manifests = render(scenario)
    _, guard = gvirtus_and_guard(manifests)
    resource = env_of(manifests.one("Deployment", "webhook"))["GVIRTUS_KAI_GPU_RESOURCE"]
    [condition] = guard["matchConditions"]
    assert f"'{resource}' in c.resources.limits" in condition["expression"]
    assert "initContainers" in condition["expression"]


@pytest.mark.parametrize(
    "values",
    [{"webhook.guardPlainGpuPods": False}, {"devicePlugin.enabled": False}],
    ids=["turned off", "no device plugin"],
)
def test_no_guard_entry_when_turned_off_or_without_virtual_gpus(values: dict[str, Any]) -> None:
    assert set(entries(render(values=values))) == {"pods.gvirtus.io"}


def test_every_scenario_with_a_device_plugin_has_the_guard() -> None:
    for scenario in SCENARIOS:
        manifests = render(scenario)
        if manifests.of_component("webhook") and manifests.of_component("device-plugin"):
            assert GUARD in entries(manifests), scenario


# --- the webhook's virtual-GPU nodes are the device plugin's nodes -----------------------------


def device_plugin_runs_on(manifests: Manifests, labels: Mapping[str, str]) -> bool:
    """Whether the device plugin DaemonSet's nodeSelector and required affinity take a node."""
    spec = pod_spec(manifests.one("DaemonSet", "device-plugin"))
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    return any(selects(term, labels) for term in required["nodeSelectorTerms"])


@pytest.mark.parametrize(
    ("scenario", "values"),
    [
        (None, {}),
        ("custom-labels-values.yaml", {}),
        (None, {"devicePlugin.nodeSelector": {"pool": "cpu"}}),
    ],
    ids=["defaults", "custom labels", "device plugin node selector"],
)
def test_the_webhooks_virtual_gpu_nodes_are_the_nodes_the_device_plugin_runs_on(
    scenario: str | None, values: dict[str, Any]
) -> None:
    manifests = render(scenario, values)
    virtual = parse_node_requirements(
        env_of(manifests.one("Deployment", "webhook"))["GVIRTUS_KAI_VIRTUAL_GPU_NODES"]
    )
    keys = sorted({r.key for r in virtual} | {"pool"})
    # Every combination of the keys involved being absent, "true", "false" or "cpu".
    for combination in itertools.product((None, "true", "false", "cpu"), repeat=len(keys)):
        labels = {k: v for k, v in zip(keys, combination, strict=True) if v is not None}
        is_virtual = all((labels.get(r.key) == r.value) == r.equals for r in virtual)
        assert is_virtual == device_plugin_runs_on(manifests, labels), labels
