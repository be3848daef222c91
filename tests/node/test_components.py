"""The nodes are real and every component of the chart runs on them from its own image, Ready
through its own probes, confined as the chart says — checked on the running processes."""

from __future__ import annotations

from lightkube.resources.core_v1 import Pod

from tests.node.chart import NAMESPACE
from tests.node.cluster import FRONTEND_NODE, GPU_NODES, NODE_NAMES, node_ready
from tests.node.kube import Kube, is_ready, proc_status, root_mount_options

COMPONENTS = ("webhook", "controller", "labeler", "device-plugin", "backend")
# The device plugin is root on purpose (the kubelet's socket directory is root's); the chart
# still drops every capability and keeps its root filesystem read-only.
ROOT_COMPONENTS = {"device-plugin"}


def test_every_node_is_ready_by_its_own_kubelet_and_untainted(kube: Kube) -> None:
    for name in NODE_NAMES:
        node = kube.node_object(name)
        assert node_ready(node), name
        assert node.status is not None
        assert node.status.nodeInfo is not None
        assert node.status.nodeInfo.kubeletVersion.startswith("v1.")
        assert node.status.nodeInfo.containerRuntimeVersion.startswith("containerd://2.")
        ready = next(c for c in node.status.conditions or [] if c.type == "Ready")
        assert ready.reason == "KubeletReady"
        assert not (node.spec and node.spec.taints), f"{name} is tainted: {node.spec.taints}"


def test_every_component_runs_from_its_image_and_is_ready_through_its_probes(
    release: Kube,
) -> None:
    for component in COMPONENTS:
        pods = release.component_pods(component)
        assert pods, f"no {component} pod"
        for pod in pods:
            assert is_ready(pod), f"{component} pod {pod.metadata} is not Ready"
            assert pod.spec is not None
            assert pod.status is not None
            for container in pod.spec.containers:
                if component != "backend":
                    assert container.readinessProbe is not None, (component, container.name)
                assert (container.image or "").startswith("localhost/gvirtus-kai-"), container.image
            for status in pod.status.containerStatuses or []:
                assert status.ready, (component, status)
                assert status.restartCount == 0, (component, status)


def test_components_run_where_the_chart_places_them(release: Kube) -> None:
    def nodes_of(component: str) -> set[str]:
        return {p.spec.nodeName or "" for p in release.component_pods(component) if p.spec}

    assert nodes_of("labeler") == set(NODE_NAMES)
    assert nodes_of("device-plugin") == {FRONTEND_NODE}
    assert nodes_of("backend") == set(GPU_NODES)


def test_running_containers_are_non_root_read_only_and_without_capabilities(
    release: Kube,
) -> None:
    seen = 0
    for component in COMPONENTS:
        for pod in release.component_pods(component):
            assert pod.spec is not None
            for container in pod.spec.containers:
                pid = release.container_pid(pod, container.name)
                status = proc_status(pid)
                uids = status["Uid"].split()
                if component in ROOT_COMPONENTS:
                    assert uids[1] == "0", (component, uids)
                else:
                    assert "0" not in uids, f"{component}/{container.name} runs as root: {uids}"
                assert int(status["CapEff"], 16) == 0, (component, status["CapEff"])
                assert int(status["CapPrm"], 16) == 0, (component, status["CapPrm"])
                assert status["NoNewPrivs"] == "1", component
                assert "ro" in root_mount_options(pid), f"{component} root filesystem is writable"
                assert status["Seccomp"] == "2", f"{component} runs without a seccomp filter"
                seen += 1
    assert seen >= len(COMPONENTS)


def test_release_namespace_holds_only_ready_pods(release: Kube) -> None:
    pods = list(release.client.list(Pod, namespace=NAMESPACE))
    assert pods
    not_ready = [p.metadata.name for p in pods if p.metadata is not None and not is_ready(p)]
    assert not not_ready, not_ready
