"""NetworkPolicies: every chart pod is covered; each policy opens exactly its container ports.

The webhook's HTTPS port (the API server's source address is not predictable) and the backend's
GVirtuS port (frontends live in any namespace) are open to all; health/metrics ports only to the
namespaces `networkPolicy.metricsNamespaceSelector` selects, none by default; the backend agent's
port to the release's controller pods too. Policies are
ingress-only: the controller and labeler reach the API server at cluster-specific addresses.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import (
    SCENARIOS,
    HelmError,
    Manifest,
    Manifests,
    labels_of,
    pod_spec,
    pod_workloads,
    render,
)

MONITORING = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
OPEN_TO_ALL = {"webhook": "https", "backend": "gvirtus"}
HEALTH_ONLY = {"controller", "labeler", "device-plugin"}


def _template_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _selected(policy: Manifest, manifests: Manifests) -> list[Manifest]:
    selector = policy["spec"]["podSelector"]["matchLabels"]
    return [
        w
        for w in pod_workloads(manifests)
        if w["kind"] != "Pod" and selector.items() <= _template_labels(w).items()
    ]


def _ports_by_number(workload: Manifest) -> dict[int, str]:
    return {
        p["containerPort"]: p["name"]
        for c in pod_spec(workload)["containers"]
        for p in c.get("ports", [])
    }


def _policy(manifests: Manifests, component: str) -> dict[str, Any]:
    spec: dict[str, Any] = manifests.one("NetworkPolicy", component)["spec"]
    return spec


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_workload_is_selected_by_exactly_one_ingress_policy(scenario: str) -> None:
    manifests = render(scenario)
    policies = manifests.of_kind("NetworkPolicy")
    if "network-policy-disabled" in scenario:
        assert policies == []
        return
    workloads = [w for w in pod_workloads(manifests) if w["kind"] != "Pod"]
    covered = [w["metadata"]["name"] for p in policies for w in _selected(p, manifests)]
    assert sorted(covered) == sorted(w["metadata"]["name"] for w in workloads)
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_policy_port_is_a_container_port_and_every_container_port_has_a_rule(
    scenario: str,
) -> None:
    manifests = render(scenario)
    for policy in manifests.of_kind("NetworkPolicy"):
        (workload,) = _selected(policy, manifests)
        container_ports = _ports_by_number(workload)
        component = labels_of(policy)["app.kubernetes.io/component"]
        ruled = [port for rule in policy["spec"]["ingress"] for port in rule["ports"]]
        for port in ruled:
            assert port["protocol"] == "TCP"
            assert port["port"] in container_ports, (policy["metadata"]["name"], port)
        ruled_numbers = [port["port"] for port in ruled]
        if component in OPEN_TO_ALL or policy["spec"]["ingress"]:
            assert sorted(set(ruled_numbers)) == sorted(container_ports)


@pytest.mark.parametrize(("component", "port_name"), sorted(OPEN_TO_ALL.items()))
def test_service_ports_are_open_to_every_source(component: str, port_name: str) -> None:
    manifests = render()
    kind = "Deployment" if component == "webhook" else "DaemonSet"
    ports = _ports_by_number(manifests.one(kind, component))
    number = next(number for number, name in ports.items() if name == port_name)
    assert _policy(manifests, component)["ingress"][0] == {
        "ports": [{"port": number, "protocol": "TCP"}]
    }


@pytest.mark.parametrize("component", sorted(HEALTH_ONLY))
def test_health_ports_admit_no_namespace_by_default(component: str) -> None:
    assert _policy(render(), component)["ingress"] == []


@pytest.mark.parametrize("component", sorted(HEALTH_ONLY))
def test_health_ports_admit_only_the_metrics_namespaces(component: str) -> None:
    manifests = render("controller-ha-evict-values.yaml")
    assert _policy(manifests, component)["ingress"] == [
        {
            "from": [{"namespaceSelector": MONITORING}],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }
    ]


def test_policy_ports_follow_the_configured_container_ports() -> None:
    values = {
        "webhook.containerPort": 9443,
        "backend.containerPort": 7000,
        "labeler.healthPort": 9090,
        "devicePlugin.healthPort": 9091,
        "controller.healthPort": 9092,
        "networkPolicy.metricsNamespaceSelector": {
            "matchExpressions": [{"key": "team", "operator": "In", "values": ["obs"]}]
        },
    }
    manifests = render(values=values)
    opened = {
        labels_of(p)["app.kubernetes.io/component"]: [
            port["port"] for rule in p["spec"]["ingress"] for port in rule["ports"]
        ]
        for p in manifests.of_kind("NetworkPolicy")
    }
    assert opened == {
        "webhook": [9443],
        "backend": [7000, 9180, 9180],
        "labeler": [9090],
        "device-plugin": [9091],
        "controller": [9092],
    }
    rule = _policy(manifests, "labeler")["ingress"][0]
    assert rule["from"] == [{"namespaceSelector": values["networkPolicy.metricsNamespaceSelector"]}]


def test_a_metrics_selector_with_an_unknown_operator_is_refused() -> None:
    selector = {"matchExpressions": [{"key": "team", "operator": "Equals", "values": ["obs"]}]}
    with pytest.raises(HelmError, match="metricsNamespaceSelector"):
        render(values={"networkPolicy.metricsNamespaceSelector": selector})


def test_the_backend_agent_port_admits_the_controller_pods_and_the_metrics_namespaces() -> None:
    manifests = render("controller-ha-evict-values.yaml")
    controller = manifests.one("Deployment", "controller")
    rules = _policy(manifests, "backend")["ingress"][1:]

    (from_controller,) = [r for r in rules if "podSelector" in r["from"][0]]
    assert from_controller["ports"] == [{"port": 9180, "protocol": "TCP"}]
    selector = from_controller["from"][0]["podSelector"]["matchLabels"]
    assert selector.items() <= _template_labels(controller).items()
    assert "namespaceSelector" not in from_controller["from"][0]  # the release namespace only
    assert {"from": [{"namespaceSelector": MONITORING}], "ports": from_controller["ports"]} in rules


def test_without_the_agent_the_backend_opens_only_the_gvirtus_port() -> None:
    manifests = render(values={"backend.agent.enabled": False})

    assert _policy(manifests, "backend")["ingress"] == [
        {"ports": [{"port": 9999, "protocol": "TCP"}]}
    ]
