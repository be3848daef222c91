"""Pod security, service-account tokens and RBAC: least privilege, one documented exception."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import (
    SCENARIOS,
    Manifest,
    container,
    labels_of,
    pod_spec,
    pod_workloads,
    render,
)

ROOT_EXCEPTION = "device-plugin"  # creates sockets in the kubelet's root-owned directory
API_CLIENTS = {"labeler"}  # the only component that talks to the API server


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


def test_service_accounts_mount_no_token_except_the_labelers() -> None:
    accounts = {
        _component(a): a["automountServiceAccountToken"] for a in render().of_kind("ServiceAccount")
    }
    assert accounts == {"labeler": True, "device-plugin": False, "backend": False, "webhook": False}


def test_each_workload_runs_under_its_own_service_account() -> None:
    manifests = render()
    accounts = {a["metadata"]["name"] for a in manifests.of_kind("ServiceAccount")}
    for workload in pod_workloads(manifests):
        if workload["kind"] != "Pod":
            assert pod_spec(workload)["serviceAccountName"] in accounts


def test_labeler_may_only_read_and_patch_nodes() -> None:
    manifests = render()
    (role,) = manifests.of_kind("ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]}
    ]
    (binding,) = manifests.of_kind("ClusterRoleBinding")
    labeler_account = manifests.one("ServiceAccount", "labeler")["metadata"]["name"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": labeler_account, "namespace": "gvirtus-system"}
    ]


def test_no_other_rbac_objects_exist_in_any_scenario() -> None:
    for scenario in SCENARIOS:
        kinds = [m["kind"] for m in render(scenario)]
        assert "Role" not in kinds
        assert "RoleBinding" not in kinds
        assert kinds.count("ClusterRole") <= 1


def test_backend_security_adapts_to_the_gvirtus_image() -> None:
    backend = render(
        values={"backend.runAsUser": 1000, "backend.readOnlyRootFilesystem": False}
    ).one("DaemonSet", "backend")
    assert pod_spec(backend)["securityContext"]["runAsUser"] == 1000
    assert pod_spec(backend)["securityContext"]["runAsNonRoot"] is True
    assert container(backend)["securityContext"]["readOnlyRootFilesystem"] is False


def test_images_default_to_the_chart_app_version_and_digest_pins_them() -> None:
    manifests = render(values={"labeler.image.digest": "sha256:" + "a" * 64})
    assert container(manifests.one("Deployment", "webhook"))["image"] == "gvirtus-kai/webhook:0.1.0"
    assert container(manifests.one("DaemonSet", "labeler"))["image"] == (
        "gvirtus-kai/labeler@sha256:" + "a" * 64
    )


def test_image_pull_secrets_reach_every_pod() -> None:
    manifests = render(values={"imagePullSecrets": [{"name": "regcred"}]})
    for workload in pod_workloads(manifests):
        assert pod_spec(workload)["imagePullSecrets"] == [{"name": "regcred"}]
