"""Where the chart's DaemonSets put their pods, decided by the real controller-manager and
scheduler from the node labels (see ``kube.NODES`` for the nodes)."""

from __future__ import annotations

from tests.cluster.kube import (
    BACKEND_NODES,
    GPU_LESS_FRONTEND_NODES,
    NODES,
    Cluster,
    wait_until,
)
from tests.cluster.release import Release


def nodes_of(cluster: Cluster, release: Release, component: str, count: int) -> list[str]:
    """The nodes of a component's DaemonSet pods, once ``count`` exist and all are bound."""

    def bound() -> list[str] | None:
        pods = cluster.pods(release.namespace, release.selector(component))
        nodes = [pod.spec.nodeName for pod in pods if pod.spec is not None and pod.spec.nodeName]
        return sorted(nodes) if len(nodes) >= count and len(nodes) == len(pods) else None

    return wait_until(bound, f"{count} bound {component} pods")


def test_backend_pods_run_only_on_gpu_nodes_opted_in_as_backends(
    cluster: Cluster, release: Release
) -> None:
    assert nodes_of(cluster, release, "backend", len(BACKEND_NODES)) == sorted(BACKEND_NODES)


def test_device_plugin_pods_run_only_on_gpu_less_frontend_nodes(
    cluster: Cluster, release: Release
) -> None:
    expected = sorted(GPU_LESS_FRONTEND_NODES)

    assert nodes_of(cluster, release, "device-plugin", len(expected)) == expected


def test_the_labeler_runs_on_every_node(cluster: Cluster, release: Release) -> None:
    nodes = nodes_of(cluster, release, "labeler", len(NODES))

    assert set(nodes) >= {node.name for node in NODES}
