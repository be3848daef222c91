"""What the API server and the controllers resolve by name: every reference lands on an object.

A schema validates each object alone; these checks read the objects of one render together, for
every chart-testing scenario, the way a real cluster would: Service and PodDisruptionBudget
selectors, named ports, volume mounts, downward API paths, service accounts, RBAC subjects, the
webhook's Service reference, and cluster-scoped names shared by all releases in a cluster.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from gvirtus_kai_webhook.app import GUARD_PATH, MUTATE_PATH

from tests.chart.conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    Manifest,
    Manifests,
    labels_of,
    pod_spec,
    pod_workloads,
    render,
    render_notes,
    run_helm,
)

CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
# Pod fields the downward API can put into env (fieldRef), as the API server validates them.
ENV_FIELD_PATHS = {
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
}


def template_labels(workload: Manifest) -> dict[str, str]:
    if workload["kind"] == "Pod":
        return labels_of(workload)
    found: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels") or {}
    return found


def selected_by(selector: dict[str, str], manifests: Manifests) -> list[Manifest]:
    """Workloads (other than helm test pods) whose pods carry every label of `selector`."""
    return [
        workload
        for workload in pod_workloads(manifests)
        if workload["kind"] != "Pod" and selector.items() <= template_labels(workload).items()
    ]


def containers_of(workload: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    containers: list[dict[str, Any]] = [
        *spec.get("initContainers", []),
        *spec["containers"],
    ]
    return containers


def probe_ports(container: dict[str, Any]) -> list[int | str]:
    ports: list[int | str] = []
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        handler = container.get(probe) or {}
        for kind in ("httpGet", "tcpSocket", "grpc"):
            if kind in handler:
                ports.append(handler[kind]["port"])
    return ports


def scenario_manifests(scenario: str) -> Manifests:
    return render(scenario)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_service_selects_exactly_one_workload_with_its_target_port(scenario: str) -> None:
    manifests = scenario_manifests(scenario)
    services = manifests.of_kind("Service")
    assert services, "every scenario renders at least the backend or the webhook Service"
    for service in services:
        (workload,) = selected_by(service["spec"]["selector"], manifests)
        container_ports = [
            (port["containerPort"], port.get("name"), port.get("protocol", "TCP"))
            for container in containers_of(workload)
            for port in container.get("ports", [])
        ]
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            matches = [
                p for p in container_ports if target in (p[0], p[1]) and p[2] == port["protocol"]
            ]
            assert matches, f"{service['metadata']['name']}:{target} has no container port"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_disruption_budget_selects_the_pods_of_one_workload(scenario: str) -> None:
    manifests = scenario_manifests(scenario)
    for budget in manifests.of_kind("PodDisruptionBudget"):
        (workload,) = selected_by(budget["spec"]["selector"]["matchLabels"], manifests)
        assert workload["metadata"]["namespace"] == budget["metadata"]["namespace"]


def test_the_ha_scenario_renders_a_disruption_budget_for_the_check_above() -> None:
    assert render("ha-webhook-values.yaml").of_kind("PodDisruptionBudget")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_workload_selector_matches_its_own_pod_template(scenario: str) -> None:
    for workload in pod_workloads(scenario_manifests(scenario)):
        if workload["kind"] == "Pod":
            continue
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template_labels(workload).items()
        assert selected_by(selector, scenario_manifests(scenario)) == [workload]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_named_probe_port_is_a_port_of_its_container(scenario: str) -> None:
    probed = 0
    for workload in pod_workloads(scenario_manifests(scenario)):
        # A number reaches the pod's IP, so any container of the pod may serve it (the backend
        # is probed on its agent's port); a name resolves in the probed container only.
        numbers = {
            port["containerPort"]
            for container in containers_of(workload)
            for port in container.get("ports", [])
        }
        for container in containers_of(workload):
            names = {port.get("name") for port in container.get("ports", [])}
            for port in probe_ports(container):
                probed += 1
                assert port in (names if isinstance(port, str) else numbers), (
                    f"{workload['kind']}/{workload['metadata']['name']} probes port {port!r}"
                )
    assert probed, "the webhook and the node agents are probed in every scenario"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_volume_mount_names_a_volume_of_its_pod(scenario: str) -> None:
    mounts = 0
    for workload in pod_workloads(scenario_manifests(scenario)):
        volumes = [volume["name"] for volume in pod_spec(workload).get("volumes", [])]
        assert len(volumes) == len(set(volumes)), "volume names must be unique in a pod"
        for container in containers_of(workload):
            for mount in container.get("volumeMounts", []):
                mounts += 1
                assert mount["name"] in volumes
    assert mounts


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_downward_api_env_reads_a_valid_pod_field(scenario: str) -> None:
    for workload in pod_workloads(scenario_manifests(scenario)):
        for container in containers_of(workload):
            for variable in container.get("env", []):
                field = (variable.get("valueFrom") or {}).get("fieldRef")
                if field is not None:
                    assert field["fieldPath"] in ENV_FIELD_PATHS, variable


def test_the_labeler_daemonset_reads_its_node_name_through_the_downward_api() -> None:
    labeler = render().one("DaemonSet", "labeler")
    (env,) = [e for e in containers_of(labeler)[0]["env"] if "valueFrom" in e]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_runs_as_a_service_account_the_chart_creates(scenario: str) -> None:
    manifests = scenario_manifests(scenario)
    accounts = {
        (account["metadata"]["namespace"], account["metadata"]["name"])
        for account in manifests.of_kind("ServiceAccount")
    }
    for workload in pod_workloads(manifests):
        if workload["kind"] == "Pod":
            assert "serviceAccountName" not in pod_spec(workload)  # the namespace default
            continue
        account = pod_spec(workload)["serviceAccountName"]
        assert (workload["metadata"]["namespace"], account) in accounts


@pytest.mark.parametrize("kind", ["ClusterRole", "Role"])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_role_bindings_grant_the_release_namespace_account_a_rendered_role(
    scenario: str, kind: str
) -> None:
    manifests = scenario_manifests(scenario)
    roles = {
        (role["metadata"].get("namespace"), role["metadata"]["name"])
        for role in manifests.of_kind(kind)
    }
    accounts = {
        (account["metadata"]["namespace"], account["metadata"]["name"])
        for account in manifests.of_kind("ServiceAccount")
    }
    for binding in manifests.of_kind(f"{kind}Binding"):
        assert binding["roleRef"]["kind"] == kind
        assert (binding["metadata"].get("namespace"), binding["roleRef"]["name"]) in roles
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            assert subject["namespace"] == NAMESPACE
            assert (subject["namespace"], subject["name"]) in accounts


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_webhook_configuration_calls_a_rendered_service_on_one_of_its_ports(
    scenario: str,
) -> None:
    manifests = scenario_manifests(scenario)
    services = {
        (service["metadata"]["namespace"], service["metadata"]["name"]): service
        for service in manifests.of_kind("Service")
    }
    for configuration in manifests.of_kind("MutatingWebhookConfiguration"):
        for hook in configuration["webhooks"]:
            reference = hook["clientConfig"]["service"]
            service = services[(reference["namespace"], reference["name"])]
            assert reference["port"] in [port["port"] for port in service["spec"]["ports"]]
            assert reference["path"] in (MUTATE_PATH, GUARD_PATH)  # routes the webhook serves


def _cluster_scoped_names(namespace: str, release: str = RELEASE) -> set[tuple[str, str]]:
    text = run_helm("template", release, str(CHART), "--namespace", namespace, "--skip-tests")
    return {
        (doc["kind"], doc["metadata"]["name"])
        for doc in yaml.safe_load_all(text)
        if doc and doc["kind"] in CLUSTER_SCOPED
    }


def test_releases_of_one_name_in_two_namespaces_claim_different_cluster_scoped_objects() -> None:
    # Helm refuses to adopt an object another release owns, so a shared name fails the install.
    first = _cluster_scoped_names("gvirtus-system")
    second = _cluster_scoped_names("gvirtus-staging")

    assert {kind for kind, _ in first} == CLUSTER_SCOPED
    assert first.isdisjoint(second)


def test_cluster_scoped_names_carry_the_release_namespace() -> None:
    names = _cluster_scoped_names("gvirtus-system")

    assert names == {
        ("ClusterRole", "gvirtus-kai-labeler.gvirtus-system"),
        ("ClusterRoleBinding", "gvirtus-kai-labeler.gvirtus-system"),
        ("ClusterRole", "gvirtus-kai-controller.gvirtus-system"),
        ("ClusterRoleBinding", "gvirtus-kai-controller.gvirtus-system"),
        ("MutatingWebhookConfiguration", "gvirtus-kai-webhook.gvirtus-system"),
    }


def test_the_notes_name_the_webhook_configuration_as_rendered() -> None:
    configuration = render().one("MutatingWebhookConfiguration")["metadata"]["name"]
    assert f"kubectl get mutatingwebhookconfiguration {configuration}\n" in render_notes()
