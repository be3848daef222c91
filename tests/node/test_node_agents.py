"""The labeler, the device plugin and the backend as the kubelets run them: what each one did to
the nodes, seen through the API and on the nodes themselves."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from lightkube.resources.core_v1 import Node, Pod

from tests.node.cluster import FRONTEND_NODE, GPU_NODES, NODE_NAMES
from tests.node.kube import WAIT, Kube, is_ready, wait_until
from tests.node.workloads import gvirtus_pod

FRONTEND = "gvirtus.io/frontend.allowed"
BACKEND = "gvirtus.io/backend.allowed"
GPU = "nvidia.com/gpu"
DEFAULT_SLOTS = "16"
PLUGIN_SOCKET = "/var/lib/kubelet/device-plugins/gvirtus-nvidia.com-gpu.sock"
CDI_SPEC_DIR = "/var/run/cdi"


def labels(kube: Kube, node: str) -> dict[str, str]:
    metadata = kube.node_object(node).metadata
    return dict(metadata.labels or {}) if metadata else {}


# -- labeler --------------------------------------------------------------------------------------


def test_labeler_pods_label_every_node_with_their_mounted_token(release: Kube) -> None:
    for name in NODE_NAMES:
        node_labels = labels(release, name)
        assert FRONTEND in node_labels, name
        assert BACKEND in node_labels, name
        node = release.node_object(name)
        assert node.metadata is not None
        managers = {m.manager for m in node.metadata.managedFields or []}
        assert any("labeler" in (m or "") for m in managers), managers
    assert labels(release, FRONTEND_NODE)[BACKEND] == "false"  # the default


def test_labeler_never_overwrites_the_label_an_administrator_set(release: Kube) -> None:
    for name in GPU_NODES:
        assert labels(release, name)[BACKEND] == "true"


def test_labeler_puts_back_a_removed_role_label(release: Kube) -> None:
    release.kubectl("label", "node", FRONTEND_NODE, f"{FRONTEND}-")
    wait_until(lambda: FRONTEND in labels(release, FRONTEND_NODE), "the frontend label back")
    assert labels(release, FRONTEND_NODE)[FRONTEND] == "true"
    # Without the label the node may have left the device plugin's selection for a moment: the
    # DaemonSet then stops its pod there and starts a new one.
    wait_until(plugin_serving(release), "the device plugin serving again")


def plugin_serving(kube: Kube) -> Callable[[], bool]:
    def serving() -> bool:
        pods = [p for p in kube.component_pods("device-plugin") if is_ready(p)]
        listing = kube.frontend.shell(f"ls {PLUGIN_SOCKET.rsplit('/', 1)[0]}").split()
        return len(pods) == 1 and PLUGIN_SOCKET.rsplit("/", 1)[1] in listing

    return serving


# -- device plugin --------------------------------------------------------------------------------


def test_device_plugin_slots_appear_in_the_frontend_nodes_allocatable(release: Kube) -> None:
    wait_until(
        lambda: release.allocatable(FRONTEND_NODE, GPU) == DEFAULT_SLOTS,
        f"{DEFAULT_SLOTS} {GPU} slots on {FRONTEND_NODE}",
    )
    wait_until(plugin_serving(release), "the device plugin's socket in the kubelet's directory")


def allocated_env(kube: Kube, name: str) -> dict[str, str]:
    kube.wait_running("default", name)
    text = kube.exec("default", name, "app", "env")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_a_gpu_pod_gets_the_allocate_answer_and_the_cdi_device_from_containerd(
    release: Kube,
) -> None:
    release.apply([gvirtus_pod("allocate-probe")])
    env = allocated_env(release, "allocate-probe")
    slot_ids = env["GVIRTUS_VGPU_IDS"].split(",")  # the Allocate answer's env
    assert len(slot_ids) == 1
    spec_files = release.frontend.shell(f"ls {CDI_SPEC_DIR}").split()
    assert spec_files, "the device plugin wrote its CDI spec on the node"
    # The CDI spec's own edits, applied by containerd (not by the kubelet's Allocate env).
    spec = release.frontend.shell(f"cat {CDI_SPEC_DIR}/{spec_files[0]}")
    assert "GVIRTUS" in spec
    cdi_env = [key for key in env if key.startswith("GVIRTUS_VGPU") and key != "GVIRTUS_VGPU_IDS"]
    assert cdi_env, f"no CDI-provided variable in the container: {sorted(env)}"
    release.kubectl("delete", "pod", "-n", "default", "allocate-probe", "--wait=false")


def registrations(kube: Kube) -> int:
    (plugin,) = kube.component_pods("device-plugin")
    assert plugin.metadata is not None
    log = kube.logs("gvirtus-system", plugin.metadata.name or "", check=False)
    return log.count("registered with the kubelet")


def test_after_a_kubelet_restart_the_plugin_registers_again_and_the_slots_come_back(
    release: Kube,
) -> None:
    before = registrations(release)
    node = release.frontend
    node.stop_kubelet()
    node.start_kubelet()
    wait_until(lambda: registrations(release) > before, "the plugin to register again")
    wait_until(
        lambda: release.allocatable(FRONTEND_NODE, GPU) == DEFAULT_SLOTS,
        "the slots back after the kubelet restart",
        WAIT,
    )
    # The same plugin process did it: the pod was not restarted.
    (plugin,) = release.component_pods("device-plugin")
    assert plugin.status is not None
    assert all(s.restartCount == 0 for s in plugin.status.containerStatuses or [])


def test_a_new_gpu_pod_starts_after_the_cdi_spec_was_deleted_on_the_node(release: Kube) -> None:
    release.frontend.shell(f"rm -f {CDI_SPEC_DIR}/*")
    release.apply([gvirtus_pod("after-cdi-delete")])
    env = allocated_env(release, "after-cdi-delete")
    assert env["GVIRTUS_VGPU_IDS"]
    release.kubectl("delete", "pod", "-n", "default", "after-cdi-delete", "--wait=false")


# -- backend --------------------------------------------------------------------------------------


def test_backend_becomes_ready_through_its_probe_without_a_single_connection(
    release: Kube,
) -> None:
    pods = release.backend_pods()
    assert {p.spec.nodeName for p in pods if p.spec} == set(GPU_NODES)
    # Readiness has run every 5 s since the start; liveness first runs 30 s after it.
    time.sleep(max(0.0, 35 - min(pod_age(p) for p in pods)))
    # A TCP probe would connect from the node (kubelet) or from the pod itself (exec): neither may
    # appear. Application pods connect from their own pod addresses on other nodes.
    node_ips = {node.ip for node in release.cluster.nodes.values()} | {
        release.cluster.instance.host_ip
    }
    for pod in release.backend_pods():
        assert pod.status is not None
        assert pod.status.podIP
        assert all(s.ready for s in pod.status.containerStatuses or [])
        own = {pod.status.podIP, "127.0.0.1"} | node_ips
        probes = [c for c in release.backend_connections(pod.status.podIP) if c["peer"][0] in own]
        assert probes == [], f"a probe connected to the backend: {probes}"


def pod_age(pod: Pod) -> float:
    assert pod.status is not None
    assert pod.status.startTime is not None
    return (datetime.now(UTC) - pod.status.startTime).total_seconds()


def test_no_backend_on_the_frontend_node(release: Kube) -> None:
    node = release.client.get(Node, FRONTEND_NODE)
    assert node.metadata is not None
    assert not [p for p in release.backend_pods() if p.spec and p.spec.nodeName == FRONTEND_NODE]
