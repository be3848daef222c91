"""The chart's placement controller, run as a local process with its own ServiceAccount's token:
a gated GVirtuS pod is pinned to a ready backend pod and released to the scheduler."""

from __future__ import annotations

import json

from lightkube.models.core_v1 import PodSchedulingGate
from lightkube.resources.core_v1 import Pod

from tests.cluster.kube import FRONTEND_NODES, GPU, Cluster
from tests.cluster.release import PROPERTIES_ANNOTATION, Release, ensure_namespace, labelled_pod

GATE = "gvirtus.io/backend"
BACKEND_CONTAINER_PORT = "9999"  # the chart's backend.containerPort


def test_a_gated_pod_is_pinned_to_the_ready_backend_and_scheduled_on_a_frontend(
    cluster: Cluster, release: Release
) -> None:
    ensure_namespace(cluster, "placement")
    pod = labelled_pod("gated", "placement")
    assert pod.spec is not None
    pod.spec.schedulingGates = [PodSchedulingGate(name=GATE)]
    pod.spec.containers[0].resources = {"limits": {GPU: "1"}}  # type: ignore[assignment]
    [backend] = release.backend_addresses

    cluster.client.create(pod)

    node = cluster.scheduled_node("placement", "gated")  # bound: the gate was removed
    stored = cluster.client.get(Pod, "gated", namespace="placement")
    assert stored.metadata is not None
    assert stored.spec is not None
    annotations = stored.metadata.annotations or {}
    assert annotations[GATE] == f"{backend}:{BACKEND_CONTAINER_PORT}"
    endpoint = json.loads(annotations[PROPERTIES_ANNOTATION])["communicator"][0]["endpoint"]
    assert (endpoint["server_address"], endpoint["port"]) == (backend, BACKEND_CONTAINER_PORT)
    assert not stored.spec.schedulingGates
    assert node in FRONTEND_NODES
