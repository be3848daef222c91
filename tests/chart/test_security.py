"""Pod security, service-account tokens and RBAC: least privilege, one documented exception."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import (
    NAMESPACE,
    SCENARIOS,
    Manifest,
    Manifests,
    container,
    labels_of,
    pod_spec,
    pod_workloads,
    render,
)

ROOT_EXCEPTION = "device-plugin"  # creates sockets in the kubelet's root-owned directory
API_CLIENTS = {"labeler", "controller"}  # the only components that talk to the API server
RBAC_GROUP = "rbac.authorization.k8s.io"


def _component(workload: Manifest) -> str:
    return labels_of(workload)["app.kubernetes.io/component"]


def _workloads() -> list[tuple[str, Manifest]]:
    return [(s, w) for s in SCENARIOS for w in pod_workloads(render(s))]


def _ids(cases: list[tuple[str, Manifest]]) -> list[str]:
    return [f"{s.removesuffix('-values.yaml')}:{w['kind']}/{_component(w)}" for s, w in cases]


WORKLOADS = _workloads()


@pytest.mark.parametrize(("scenario", "workload"), WORKLOADS, ids=_ids(WORKLOADS))
def test_every_container_is_locked_down(scenario: str, workload: Manifest) -> None:
    for c in pod_spec(workload)["containers"]:
        context: dict[str, Any] = c["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["privileged"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert "add" not in context["capabilities"]
        assert c["resources"]["requests"]
        assert c["resources"]["limits"]
        assert c["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize(("scenario", "workload"), WORKLOADS, ids=_ids(WORKLOADS))
def test_every_pod_but_the_device_plugin_runs_as_a_non_root_high_uid(
    scenario: str, workload: Manifest
) -> None:
    context = pod_spec(workload)["securityContext"]
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    if _component(workload) == ROOT_EXCEPTION:
        assert context["runAsUser"] == 0  # the one exception, detailed in the test below
        return
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] >= 10000
    assert context["runAsGroup"] >= 10000


def test_device_plugin_is_root_but_unprivileged() -> None:
    plugin = render().one("DaemonSet", "device-plugin")
    assert pod_spec(plugin)["securityContext"] == {
        "runAsNonRoot": False,
        "runAsUser": 0,
        "runAsGroup": 0,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    context = container(plugin)["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["privileged"] is False
    assert "hostNetwork" not in pod_spec(plugin)
    assert "hostPID" not in pod_spec(plugin)


@pytest.mark.parametrize(("scenario", "workload"), WORKLOADS, ids=_ids(WORKLOADS))
def test_only_api_clients_mount_a_service_account_token(scenario: str, workload: Manifest) -> None:
    expected = _component(workload) in API_CLIENTS
    assert pod_spec(workload)["automountServiceAccountToken"] is expected


def test_service_accounts_mount_no_token_except_the_api_clients() -> None:
    accounts = {
        _component(a): a["automountServiceAccountToken"] for a in render().of_kind("ServiceAccount")
    }
    assert accounts == {
        "labeler": True,
        "controller": True,
        "device-plugin": False,
        "backend": False,
        "webhook": False,
    }


def test_each_workload_runs_under_its_own_service_account() -> None:
    manifests = render()
    accounts = {a["metadata"]["name"] for a in manifests.of_kind("ServiceAccount")}
    for workload in pod_workloads(manifests):
        if workload["kind"] != "Pod":
            assert pod_spec(workload)["serviceAccountName"] in accounts


def _bound_rules(manifests: Manifests, component: str, scope: str) -> list[dict[str, Any]]:
    """Rules of the component's (Cluster)Role, checked to be bound to its own account only."""
    role = manifests.one(scope, component)
    binding = manifests.one(f"{scope}Binding", component)
    account = manifests.one("ServiceAccount", component)["metadata"]
    assert binding["roleRef"] == {
        "apiGroup": RBAC_GROUP,
        "kind": scope,
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    if scope == "Role":
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
    rules: list[dict[str, Any]] = role["rules"]
    return rules


def test_labeler_may_only_read_and_patch_nodes() -> None:
    assert _bound_rules(render(), "labeler", "ClusterRole") == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]}
    ]


# The controller's RBAC, exactly as the placement contract grants it.
CONTROLLER_PODS = {
    "apiGroups": [""],
    "resources": ["pods"],
    "verbs": ["get", "list", "watch", "patch"],
}
CONTROLLER_EVENTS = {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}
CONTROLLER_EVICTION = {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]}
CONTROLLER_SLICES = {
    "apiGroups": ["discovery.k8s.io"],
    "resources": ["endpointslices"],
    "verbs": ["get", "list", "watch"],
}
CONTROLLER_LEASES = {
    "apiGroups": ["coordination.k8s.io"],
    "resources": ["leases"],
    "verbs": ["get", "create", "update"],
}


@pytest.mark.parametrize(
    ("values", "cluster_rules", "namespace_rules"),
    [
        pytest.param(
            {}, [CONTROLLER_PODS, CONTROLLER_EVENTS], [CONTROLLER_SLICES], id="keep-single"
        ),
        pytest.param(
            {"controller.onBackendLoss": "evict"},
            [CONTROLLER_PODS, CONTROLLER_EVENTS, CONTROLLER_EVICTION],
            [CONTROLLER_SLICES],
            id="evict-single",
        ),
        pytest.param(
            {"controller.replicaCount": 2},
            [CONTROLLER_PODS, CONTROLLER_EVENTS],
            [CONTROLLER_SLICES, CONTROLLER_LEASES],
            id="keep-ha",
        ),
        pytest.param(
            {"controller.onBackendLoss": "evict", "controller.replicaCount": 3},
            [CONTROLLER_PODS, CONTROLLER_EVENTS, CONTROLLER_EVICTION],
            [CONTROLLER_SLICES, CONTROLLER_LEASES],
            id="evict-ha",
        ),
    ],
)
def test_controller_rbac_is_exactly_the_placement_contract(
    values: dict[str, Any],
    cluster_rules: list[dict[str, Any]],
    namespace_rules: list[dict[str, Any]],
) -> None:
    manifests = render(values=values)
    assert _bound_rules(manifests, "controller", "ClusterRole") == cluster_rules
    assert _bound_rules(manifests, "controller", "Role") == namespace_rules


def test_rbac_objects_are_exactly_the_labelers_and_the_controllers_in_every_scenario() -> None:
    rbac_kinds = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    for scenario in SCENARIOS:
        manifests = render(scenario)
        found = sorted((m["kind"], _component(m)) for m in manifests if m["kind"] in rbac_kinds)
        expected = []
        if manifests.of_component("labeler"):
            expected += [("ClusterRole", "labeler"), ("ClusterRoleBinding", "labeler")]
        if manifests.of_component("controller"):
            expected += [(kind, "controller") for kind in rbac_kinds]
        assert found == sorted(expected), scenario


def test_the_ha_evict_scenario_renders_the_widest_controller_rbac() -> None:
    manifests = render("controller-ha-evict-values.yaml")
    assert CONTROLLER_EVICTION in manifests.one("ClusterRole", "controller")["rules"]
    assert CONTROLLER_LEASES in manifests.one("Role", "controller")["rules"]


def test_backend_security_adapts_to_the_gvirtus_image() -> None:
    backend = render(
        values={"backend.runAsUser": 1000, "backend.readOnlyRootFilesystem": False}
    ).one("DaemonSet", "backend")
    assert pod_spec(backend)["securityContext"]["runAsUser"] == 1000
    assert pod_spec(backend)["securityContext"]["runAsNonRoot"] is True
    assert container(backend, "backend")["securityContext"]["readOnlyRootFilesystem"] is False


def test_images_default_to_the_released_images_of_the_app_version_and_digest_pins_them() -> None:
    manifests = render(values={"labeler.image.digest": "sha256:" + "a" * 64})
    assert container(manifests.one("Deployment", "webhook"))["image"] == (
        "ghcr.io/gvirtus/gvirtus-kai-webhook:0.1.0"
    )
    assert container(manifests.one("Deployment", "controller"))["image"] == (
        "ghcr.io/gvirtus/gvirtus-kai-controller:0.1.0"
    )
    assert container(manifests.one("DaemonSet", "labeler"))["image"] == (
        "ghcr.io/gvirtus/gvirtus-kai-labeler@sha256:" + "a" * 64
    )


def test_image_pull_secrets_reach_every_pod() -> None:
    manifests = render(values={"imagePullSecrets": [{"name": "regcred"}]})
    for workload in pod_workloads(manifests):
        assert pod_spec(workload)["imagePullSecrets"] == [{"name": "regcred"}]
