"""Role labels are defined once in values and reach labeler, device plugin, backend and webhook."""

from __future__ import annotations

import pytest

from tests.chart.conftest import (
    HelmError,
    container,
    env_of,
    labels_of,
    pod_spec,
    pod_workloads,
    render,
)

DEFAULT = {
    "frontend": "gvirtus.io/frontend.allowed",
    "backend": "gvirtus.io/backend.allowed",
    "gpu": "nvidia.com/gpu.present",
    "enable": "gvirtus.io/enabled",
}
CUSTOM = {
    "frontend": "example.com/gvirtus-frontend",
    "backend": "example.com/gvirtus-backend",
    "gpu": "example.com/has-gpu",
    "enable": "example.com/gvirtus",
}
CASES = [
    pytest.param(None, DEFAULT, "true", "false", id="defaults"),
    pytest.param("custom-labels-values.yaml", CUSTOM, "false", "false", id="custom-labels"),
]
SELECTOR_KEYS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
}


@pytest.mark.parametrize(("scenario", "keys", "frontend_default", "backend_default"), CASES)
def test_labeler_defaults_name_both_role_labels(
    scenario: str | None, keys: dict[str, str], frontend_default: str, backend_default: str
) -> None:
    env = env_of(render(scenario).one("DaemonSet", "labeler"))
    assert env["GVIRTUS_KAI_LABELS"] == (
        f"{keys['frontend']}={frontend_default},{keys['backend']}={backend_default}"
    )


@pytest.mark.parametrize(("scenario", "keys", "frontend_default", "backend_default"), CASES)
def test_device_plugin_requires_frontend_nodes_without_a_gpu_in_one_term(
    scenario: str | None, keys: dict[str, str], frontend_default: str, backend_default: str
) -> None:
    affinity = pod_spec(render(scenario).one("DaemonSet", "device-plugin"))["affinity"]
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {
            "matchExpressions": [
                {"key": keys["frontend"], "operator": "In", "values": ["true"]},
                {"key": keys["gpu"], "operator": "NotIn", "values": ["true"]},
            ]
        }
    ]


@pytest.mark.parametrize(("scenario", "keys", "frontend_default", "backend_default"), CASES)
def test_backend_runs_only_on_opted_in_gpu_nodes(
    scenario: str | None, keys: dict[str, str], frontend_default: str, backend_default: str
) -> None:
    spec = pod_spec(render(scenario).one("DaemonSet", "backend"))
    assert spec["nodeSelector"] == {keys["backend"]: "true", keys["gpu"]: "true"}


@pytest.mark.parametrize(("scenario", "keys", "frontend_default", "backend_default"), CASES)
def test_webhook_injects_the_frontend_label_and_selects_the_enable_label(
    scenario: str | None, keys: dict[str, str], frontend_default: str, backend_default: str
) -> None:
    manifests = render(scenario)
    assert env_of(manifests.one("Deployment", "webhook"))["GVIRTUS_KAI_FRONTEND_LABEL"] == (
        f"{keys['frontend']}=true"
    )
    hook = manifests.one("MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["objectSelector"] == {"matchLabels": {keys["enable"]: "true"}}


def test_backend_node_selector_keeps_role_labels_over_user_values() -> None:
    spec = pod_spec(
        render(
            values={"backend.nodeSelector": {"gvirtus.io/backend.allowed": "false", "zone": "a"}}
        ).one("DaemonSet", "backend")
    )
    assert spec["nodeSelector"] == {
        "gvirtus.io/backend.allowed": "true",
        "nvidia.com/gpu.present": "true",
        "zone": "a",
    }


def test_gpu_resource_reaches_device_plugin_webhook_and_helm_test() -> None:
    manifests = render("custom-labels-values.yaml")
    plugin_env = env_of(manifests.one("DaemonSet", "device-plugin"))
    assert plugin_env["GVIRTUS_KAI_RESOURCE_NAME"] == "example.com/vgpu"
    webhook_env = env_of(manifests.one("Deployment", "webhook"))
    assert webhook_env["GVIRTUS_KAI_GPU_RESOURCE"] == "example.com/vgpu"
    assert "example.com/vgpu" in container(manifests.one("Pod", "helm-test"))["command"]


def test_backend_requests_the_physical_gpu_not_the_virtual_resource() -> None:
    # A virtual gpuResource is only advertised on GPU-less frontend nodes: requesting it would
    # leave backend pods unschedulable on the GPU nodes they are meant for.
    limits = container(render("custom-labels-values.yaml").one("DaemonSet", "backend"), "backend")[
        "resources"
    ]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    assert "example.com/vgpu" not in limits


def test_backend_gpu_resource_follows_its_value() -> None:
    backend = render(values={"backend.gpu.resource": "amd.com/gpu", "backend.gpu.count": 2}).one(
        "DaemonSet", "backend"
    )
    limits = container(backend, "backend")["resources"]["limits"]
    assert limits["amd.com/gpu"] == 2
    assert "nvidia.com/gpu" not in limits


def test_gpu_resource_is_the_only_name_the_device_plugin_advertises() -> None:
    # The 0.1.0 compatibility value devicePlugin.resourceName is gone: the schema refuses it.
    with pytest.raises(HelmError, match="resourceName"):
        render(values={"devicePlugin.resourceName": "example.com/vgpu"})


def test_labeler_tolerates_every_taint_by_default() -> None:
    spec = pod_spec(render().one("DaemonSet", "labeler"))
    assert spec["tolerations"] == [{"operator": "Exists"}]


def test_labeler_deployment_mode_runs_one_replica_over_all_nodes() -> None:
    manifests = render("labeler-deployment-values.yaml")
    assert [m["kind"] for m in manifests.of_component("labeler")].count("DaemonSet") == 0
    deployment = manifests.one("Deployment", "labeler")
    assert deployment["spec"]["replicas"] == 1
    labeler = container(deployment)
    assert labeler["command"] == ["gvirtus-labeler"]
    assert labeler["args"] == ["--all-nodes"]
    assert "GVIRTUS_KAI_NODE_NAME" not in env_of(deployment)


def test_labeler_daemonset_labels_its_own_node_from_the_downward_api() -> None:
    labeler = render().one("DaemonSet", "labeler")
    assert container(labeler)["command"] == ["gvirtus-labeler"]
    assert "args" not in container(labeler)
    assert env_of(labeler)["GVIRTUS_KAI_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


@pytest.mark.parametrize(
    ("component", "kinds"),
    [
        ("labeler", {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}),
        ("devicePlugin", {"ServiceAccount", "DaemonSet"}),
        ("backend", {"ServiceAccount", "DaemonSet", "Service"}),
        (
            "controller",
            {
                "ServiceAccount",
                "Deployment",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            },
        ),
        (
            "webhook",
            {"ServiceAccount", "Deployment", "Service", "Secret", "MutatingWebhookConfiguration"},
        ),
    ],
)
def test_each_component_switches_off_completely(component: str, kinds: set[str]) -> None:
    label = {"devicePlugin": "device-plugin"}.get(component, component)
    assert {m["kind"] for m in render().of_component(label)} == kinds | {"NetworkPolicy"}
    remaining = render(values={f"{component}.enabled": False})
    assert not remaining.of_component(label)
    assert remaining  # the other components still render


def test_network_policies_switch_off_and_nothing_else_changes() -> None:
    with_policies = render(with_tests=False)
    without = render("network-policy-disabled-values.yaml", with_tests=False)
    assert not without.of_kind("NetworkPolicy")
    names = [
        (m["kind"], m["metadata"]["name"]) for m in with_policies if m["kind"] != "NetworkPolicy"
    ]
    assert names == [(m["kind"], m["metadata"]["name"]) for m in without]


def test_only_webhook_and_backend_scenario_has_no_node_agents() -> None:
    manifests = render("webhook-and-backend-only-values.yaml")
    assert manifests.components() == {"backend", "controller", "webhook", "helm-test"}


def test_controller_disabled_scenario_renders_no_controller_object() -> None:
    manifests = render("controller-disabled-values.yaml")
    assert not manifests.of_component("controller")
    assert env_of(manifests.one("Deployment", "webhook"))["GVIRTUS_KAI_PLACEMENT"] == "dns"


def test_every_selector_uses_only_the_stable_selector_labels() -> None:
    manifests = render()
    for workload in pod_workloads(manifests):
        if workload["kind"] == "Pod":
            continue
        selector = workload["spec"]["selector"]["matchLabels"]
        assert set(selector) == SELECTOR_KEYS
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template_labels.items()
    for service in manifests.of_kind("Service"):
        assert set(service["spec"]["selector"]) == SELECTOR_KEYS


def test_every_object_carries_the_full_label_set() -> None:
    for manifest in render():
        labels = labels_of(manifest)
        assert labels["app.kubernetes.io/part-of"] == "gvirtus-kai"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "gvirtus-kai-0.1.0"
        assert labels.keys() >= SELECTOR_KEYS


def test_common_labels_reach_every_object() -> None:
    for manifest in render(values={"commonLabels": {"team": "gpu"}}):
        assert labels_of(manifest)["team"] == "gpu"
