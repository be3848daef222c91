"""GVirtuS-KAI on a real cluster: install, label, advertise, mutate, `helm test`, uninstall.

Runs against the cluster in KUBECONFIG with the real helm and kubectl binaries; skipped otherwise.
The tests share one release and run in file order: the uninstall test comes last.
Node labels the labeler added stay after the uninstall (the labeler never removes labels);
the suite restores only the probe node's two role labels it changed itself.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest

from tests.e2e.cluster import (
    Cli,
    CommandFailedError,
    E2EConfig,
    run_helm_test,
    skip_reason,
    wait_until,
)
from tests.e2e.conftest import ProbeNode, Release, RoleLabels
from tests.e2e.objects import (
    allocatable,
    application_pod,
    container,
    env_value,
    expected_frontend_labels,
    labels,
    nodes_by_name,
    scheduling_gates,
    virtual_gpu_nodes,
    volume_projecting_annotation,
)

_SKIP = skip_reason(os.environ)
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

OWN_NODE_SELECTOR = {"kubernetes.io/os": "linux"}
# The placement contract: the webhook gates a pod, the controller pins it and removes the gate.
BACKEND_GATE = "gvirtus.io/backend"


def node_labels(kubectl: Cli) -> dict[str, dict[str, str]]:
    return {name: labels(node) for name, node in nodes_by_name(nodes(kubectl)).items()}


def nodes(kubectl: Cli) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json("get", "nodes")["items"]
    return items


def dry_run_create(kubectl: Cli, pod: dict[str, Any], e2e_config: E2EConfig) -> dict[str, Any]:
    """Creates `pod` with a server-side dry run: admission (our webhook) runs, nothing is stored.

    Retried while the API server cannot reach the webhook yet (endpoints settle after `--wait`).
    """

    def attempt() -> dict[str, Any] | str:
        try:
            return kubectl.json("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod))
        except CommandFailedError as exc:
            if "failed calling webhook" in exc.stderr:
                return exc.stderr
            raise

    result = wait_until(
        attempt,
        lambda outcome: isinstance(outcome, dict),
        what="the API server to call the GVirtuS webhook",
        timeout=min(120.0, e2e_config.timeout_seconds),
    )
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def mutated_pod(
    kubectl: Cli, e2e_config: E2EConfig, release: Release, apps_namespace: str
) -> dict[str, Any]:
    pod = application_pod(
        apps_namespace,
        enable_label=release.values["enableLabel"],
        gpu_resource=release.values["gpuResource"],
        node_selector=OWN_NODE_SELECTOR,
    )
    return dry_run_create(kubectl, pod, e2e_config)


def test_labeler_gives_every_node_without_a_frontend_label_the_default(
    kubectl: Cli,
    e2e_config: E2EConfig,
    role_labels: RoleLabels,
    labels_before_install: dict[str, dict[str, str]],
    release: Release,
) -> None:
    expected = expected_frontend_labels(
        labels_before_install, role_labels.frontend_key, role_labels.frontend_default
    )

    def frontend_values() -> dict[str, str | None]:
        return {
            name: node.get(role_labels.frontend_key)
            for name, node in node_labels(kubectl).items()
            if name in expected
        }

    observed = wait_until(
        frontend_values,
        lambda values: values == expected,
        what=f"the labeler to set {role_labels.frontend_key} on every node",
        timeout=e2e_config.timeout_seconds,
    )
    assert observed == expected


def test_labeler_keeps_a_role_label_an_operator_set(
    kubectl: Cli,
    e2e_config: E2EConfig,
    role_labels: RoleLabels,
    probe_node: ProbeNode,
    release: Release,
) -> None:
    # Once the probe node has its frontend label back, the labeler has handled that node.
    handled = wait_until(
        lambda: node_labels(kubectl)[probe_node.name],
        lambda node: role_labels.frontend_key in node,
        what=f"the labeler to handle node {probe_node.name}",
        timeout=e2e_config.timeout_seconds,
    )
    assert handled[role_labels.backend_key] == probe_node.operator_backend_value


def test_device_plugin_advertises_the_virtual_gpus_on_gpu_less_frontend_nodes(
    kubectl: Cli,
    e2e_config: E2EConfig,
    role_labels: RoleLabels,
    probe_node: ProbeNode,
    release: Release,
) -> None:
    resource = release.values["gpuResource"]
    count = str(release.values["devicePlugin"]["deviceCount"])

    def advertised() -> dict[str, str | None]:
        current = nodes(kubectl)
        names = virtual_gpu_nodes(current, role_labels.frontend_key, role_labels.gpu_present_key)
        by_name = nodes_by_name(current)
        return {name: allocatable(by_name[name], resource) for name in names}

    observed = wait_until(
        advertised,
        lambda per_node: (
            probe_node.name in per_node and all(value == count for value in per_node.values())
        ),
        what=f"allocatable {resource}={count} on every GPU-less frontend node",
        timeout=e2e_config.timeout_seconds,
    )
    assert observed[probe_node.name] == count


def test_webhook_gates_the_pod_for_the_controller_and_writes_no_address(
    mutated_pod: dict[str, Any],
) -> None:
    annotations = mutated_pod["metadata"].get("annotations") or {}

    assert BACKEND_GATE in scheduling_gates(mutated_pod)
    assert BACKEND_GATE not in annotations  # the controller writes the backend later


def test_webhook_gates_a_sed_pod_too_and_wraps_its_command(
    kubectl: Cli, e2e_config: E2EConfig, release: Release, apps_namespace: str
) -> None:
    pod = application_pod(
        apps_namespace,
        enable_label=release.values["enableLabel"],
        gpu_resource=release.values["gpuResource"],
        node_selector=OWN_NODE_SELECTOR,
        name="gvirtus-e2e-sed",
    )
    pod["metadata"]["annotations"] = {"gvirtus.io/strategy": "sed"}

    created = dry_run_create(kubectl, pod, e2e_config)

    app = container(created, "app")
    assert BACKEND_GATE in scheduling_gates(created)  # placed by the controller, as mount pods
    assert app["command"][:2] == ["/bin/sh", "-c"]
    assert app["command"][4:] == ["sleep", "3600"]
    [variable] = [e for e in app["env"] if e["name"] == "GVIRTUS_KAI_BACKEND"]
    assert variable["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['gvirtus.io/backend']"
    )


def test_a_gated_pod_waits_and_says_why_while_no_backend_is_ready(
    kubectl: Cli, e2e_config: E2EConfig, release: Release, apps_namespace: str
) -> None:
    # The e2e cluster has no GPU node opted in as a backend, so the pod must wait, visibly.
    name = "gvirtus-e2e-waiting"
    pod = application_pod(
        apps_namespace,
        enable_label=release.values["enableLabel"],
        gpu_resource=release.values["gpuResource"],
        node_selector=OWN_NODE_SELECTOR,
        name=name,
    )
    kubectl.run("create", "-f", "-", stdin=json.dumps(pod))
    try:
        events = wait_until(
            lambda: kubectl.json(
                "get",
                "events",
                "--namespace",
                apps_namespace,
                "--field-selector",
                f"involvedObject.name={name},reason=WaitingForBackend",
            )["items"],
            bool,
            what=f"the controller's WaitingForBackend Event on pod {name}",
            timeout=e2e_config.timeout_seconds,
        )
        current = kubectl.json("get", "pod", name, "--namespace", apps_namespace)

        assert "no ready GVirtuS backend" in events[0]["message"]
        assert BACKEND_GATE in scheduling_gates(current)
        assert not current["spec"].get("nodeName")
    finally:
        kubectl.run("delete", "pod", name, "--namespace", apps_namespace, "--wait=false")


def test_webhook_mounts_the_frontend_config_and_points_gvirtus_config_at_it(
    mutated_pod: dict[str, Any], release: Release
) -> None:
    config_file = f"{release.values['webhook']['gvirtusHome'].rstrip('/')}/etc/properties.json"
    app = container(mutated_pod, "app")
    volume = volume_projecting_annotation(mutated_pod, "gvirtus.io/properties")

    assert volume is not None
    assert {"name": volume, "mountPath": config_file} in [
        {"name": mount["name"], "mountPath": mount["mountPath"]}
        for mount in app.get("volumeMounts") or []
    ]
    assert env_value(app, "GVIRTUS_CONFIG") == config_file


def test_webhook_merges_the_frontend_node_selector_into_the_pods_own(
    mutated_pod: dict[str, Any], role_labels: RoleLabels
) -> None:
    assert mutated_pod["spec"]["nodeSelector"] == {
        **OWN_NODE_SELECTOR,
        role_labels.frontend_key: "true",
    }


def test_webhook_leaves_pods_without_the_enable_label_alone(
    kubectl: Cli, e2e_config: E2EConfig, release: Release, apps_namespace: str
) -> None:
    pod = application_pod(
        apps_namespace,
        enable_label=None,
        gpu_resource=release.values["gpuResource"],
        node_selector=OWN_NODE_SELECTOR,
    )

    created = dry_run_create(kubectl, pod, e2e_config)

    assert "gvirtus.io/properties" not in (created["metadata"].get("annotations") or {})
    assert created["spec"]["nodeSelector"] == OWN_NODE_SELECTOR


def test_helm_test_passes(helm: Cli, kubectl: Cli, e2e_config: E2EConfig, release: Release) -> None:
    # Raises CommandFailedError with the test pods' logs when a chart test fails.
    output = run_helm_test(
        helm, kubectl, release.name, release.namespace, e2e_config.timeout_seconds
    )

    # helm exits 0 for a release without tests too: the chart's test must have run.
    assert re.search(r"^Phase:\s+Succeeded$", output, flags=re.MULTILINE), output


def test_uninstall_leaves_nothing_of_the_release_behind(
    helm: Cli, kubectl: Cli, e2e_config: E2EConfig, release: Release
) -> None:
    helm.run(
        "uninstall", release.name, "--namespace", release.namespace,
        "--wait", "--timeout", f"{int(e2e_config.timeout_seconds)}s",
    )  # fmt: skip

    def leftovers() -> list[str]:
        return objects_with_selector(kubectl, release.selector, release.namespace)

    remaining = wait_until(
        leftovers,
        lambda found: not found,
        what=f"every object labelled {release.selector} to be deleted",
        timeout=e2e_config.timeout_seconds,
    )
    assert remaining == []
    assert not helm.succeeds("status", release.name, "--namespace", release.namespace)


def objects_with_selector(kubectl: Cli, selector: str, namespace: str) -> list[str]:
    """Every listable object, cluster-scoped or in `namespace`, that carries the label selector."""
    found: list[str] = []
    for namespaced in (False, True):
        kinds = kubectl.run(
            "api-resources", "--verbs=list", f"--namespaced={str(namespaced).lower()}", "-o", "name"
        ).split()
        scope = ["--namespace", namespace] if namespaced else []
        for kind in kinds:
            if kind.startswith("events"):
                continue  # events are not owned by the release and age out on their own
            out = kubectl.run("get", kind, *scope, "--selector", selector, "-o", "name")
            found += out.split()
    return found
