"""The controller's load and demand values as rendered: the policy, the client limit, and the
placeholder pods' settings, PriorityClass and permissions (only with ``controller.demand``)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gvirtus_kai_controller.settings import Settings

from tests.chart.conftest import NAMESPACE, HelmError, Manifests, env_of, render, render_notes

DEMAND = {"controller.demand.enabled": True}


def controller_env(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return env_of(render(values=values).one("Deployment", "controller"))


def role_rules(manifests: Manifests) -> list[dict[str, Any]]:
    return list(manifests.one("Role", "controller")["rules"])


@pytest.mark.parametrize(
    ("values", "policy"),
    [
        ({}, "leastLoaded"),  # the agent is on by default: measured load
        ({"backend.agent.enabled": False}, "leastPods"),  # nothing to measure with
        ({"backend.enabled": False}, "leastPods"),  # no backend of the chart, no agent
    ],
)
def test_the_default_policy_follows_the_backend_agent(values: dict[str, Any], policy: str) -> None:
    assert controller_env(values)["GVIRTUS_KAI_POLICY"] == policy


def test_an_explicit_policy_is_passed_as_given() -> None:
    env = controller_env({"controller.policy": "sameZone"})
    assert env["GVIRTUS_KAI_POLICY"] == "sameZone"


def test_least_loaded_is_a_policy_the_chart_accepts() -> None:
    assert controller_env({"controller.policy": "leastLoaded"})["GVIRTUS_KAI_POLICY"] == (
        "leastLoaded"
    )


def test_an_unknown_policy_is_refused_by_the_schema() -> None:
    with pytest.raises(HelmError, match="policy"):
        render(values={"controller.policy": "mostLoaded"})


def test_the_client_limit_and_poll_interval_reach_the_controller() -> None:
    env = controller_env({"controller.maxClientsPerBackend": 6, "controller.loadPollSeconds": 5})
    assert env["GVIRTUS_KAI_MAX_CLIENTS_PER_BACKEND"] == "6"
    assert env["GVIRTUS_KAI_LOAD_POLL_SECONDS"] == "5"
    assert env["GVIRTUS_KAI_AGENT_PORT_NAME"] == "agent"


def test_without_demand_there_is_no_placeholder_setting_class_or_permission() -> None:
    manifests = render()
    assert not any(name.startswith("GVIRTUS_KAI_DEMAND_") for name in controller_env())
    assert manifests.of_kind("PriorityClass") == []
    assert all("deployments" not in rule["resources"] for rule in role_rules(manifests))
    assert all("pods" not in rule["resources"] for rule in role_rules(manifests))


def test_placeholders_ask_for_what_a_backend_pod_needs_of_a_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = {
        **DEMAND,
        "backend.nodeSelector": {"node.example.com/pool": "gpu"},
        "backend.tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "backend.gpu.resource": "nvidia.com/a100",
        "controller.demand.image": "localhost/pause:dev",
    }
    for name, value in controller_env(values).items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    settings = Settings()  # the rendered environment parses
    assert settings.demand_enabled
    assert settings.demand_owner == "gvirtus-kai-controller"
    assert settings.demand_image == "localhost/pause:dev"
    assert settings.demand_gpu_resource == "nvidia.com/a100"
    assert settings.demand_node_selector == {
        "gvirtus.io/backend.allowed": "true",
        "nvidia.com/gpu.present": "true",
        "node.example.com/pool": "gpu",
    }
    assert settings.demand_tolerations == [
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert settings.demand_requests == {"cpu": "100m", "memory": "256Mi"}
    assert settings.demand_wait_seconds == 60
    assert settings.demand_max_placeholders == 4


def test_the_placeholders_priority_class_never_preempts_and_is_named_by_the_controller() -> None:
    manifests = render(values=DEMAND)
    [priority_class] = manifests.of_kind("PriorityClass")
    assert priority_class["value"] == -10
    assert priority_class["preemptionPolicy"] == "Never"
    assert priority_class["globalDefault"] is False
    env = env_of(manifests.one("Deployment", "controller"))
    assert env["GVIRTUS_KAI_DEMAND_PRIORITY_CLASS"] == priority_class["metadata"]["name"]
    assert priority_class["metadata"]["name"].endswith(f".{NAMESPACE}")


def test_demand_grants_pod_writes_in_the_release_namespace_only() -> None:
    manifests = render(values=DEMAND)
    rules = role_rules(manifests)
    assert {
        "apiGroups": [""],
        "resources": ["pods"],
        "verbs": sorted(["create", "delete", "list", "watch"]),
    } in [{**rule, "verbs": sorted(rule["verbs"])} for rule in rules]
    [deployments] = [rule for rule in rules if rule["resources"] == ["deployments"]]
    assert deployments["verbs"] == ["get"]
    assert deployments["resourceNames"] == ["gvirtus-kai-controller"]
    cluster_rules = manifests.one("ClusterRole", "controller")["rules"]
    assert all(
        "create" not in rule["verbs"] and "delete" not in rule["verbs"]
        for rule in cluster_rules
        if "pods" in rule["resources"]
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("controller.demand.priority", 0),  # as high as workloads: it would never be preempted
        ("controller.demand.maxPlaceholders", 0),
        ("controller.demand.waitSeconds", -1),
        ("controller.demand.image", ""),
        ("controller.maxClientsPerBackend", -1),
        ("controller.loadPollSeconds", 0),
    ],
)
def test_the_schema_refuses_demand_and_load_values_that_cannot_work(path: str, value: Any) -> None:
    with pytest.raises(HelmError):
        render(values={**DEMAND, path: value})


def test_the_rendered_json_settings_are_json() -> None:
    env = controller_env(DEMAND)
    for name in ("REQUESTS", "NODE_SELECTOR", "TOLERATIONS"):
        json.loads(env[f"GVIRTUS_KAI_DEMAND_{name}"])


def test_the_notes_name_the_policy_in_effect_and_the_placeholders() -> None:
    notes = render_notes(values=DEMAND)
    assert 'policy "leastLoaded"' in notes
    assert "placeholder pods ask for backend nodes after pods waited 60s" in notes
    assert "placeholder" not in render_notes()
