"""GPU pods that are no GVirtuS pods, beside GVirtuS pods, on the real API server and scheduler:
the chart's guard entry (its CEL match condition evaluated by the API server) and the webhook's
guard route keep them off the frontend nodes, whose GPUs are the device plugin's virtual slots."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from lightkube.models.core_v1 import Container
from lightkube.resources.core_v1 import Pod

from tests.cluster.kube import (
    BACKEND_NODES,
    FRONTEND,
    FRONTEND_NODES,
    GPU,
    GPU_LESS_FRONTEND_NODES,
    GPU_PRESENT,
    NODES,
    Cluster,
    wait_until,
)
from tests.cluster.release import ENABLE_LABEL, Release, ensure_namespace, labelled_pod

NAMESPACE = "plain-gpu"
OPTED_OUT = "plain-gpu-opted-out"
REAL_GPU_NODES = {n.name for n in NODES if n.labels.get(GPU_PRESENT) == "true" and n.gpus}
# Each backend pod holds one physical GPU of its node; the GPU nodes that are no backends are free.
FREE_GPU_NODES = REAL_GPU_NODES - BACKEND_NODES
PLAIN = {"app": "cuda-job"}
GPU_LIMIT: Any = {"limits": {GPU: "1"}}
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


def gpu_pod(name: str, namespace: str = NAMESPACE, labels: dict[str, str] | None = None) -> Pod:
    pod = labelled_pod(name, namespace, labels or PLAIN)
    assert pod.spec is not None
    pod.spec.containers[0].resources = GPU_LIMIT
    return pod


def node_terms(pod: Pod) -> list[Any]:
    """The pod's required node-affinity terms as the API server stored them (none: [])."""
    assert pod.spec is not None
    affinity = pod.spec.affinity
    if affinity is None or affinity.nodeAffinity is None:
        return []
    required = affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution
    return list(required.nodeSelectorTerms) if required is not None else []


def keeps_off_frontends(pod: Pod) -> bool:
    """Every term of the pod excludes the frontend label or requires a physical GPU."""
    terms = node_terms(pod)
    return bool(terms) and all(
        any(
            (e.key, e.operator) in ((FRONTEND, "NotIn"), (GPU_PRESENT, "In"))
            for e in term.matchExpressions or []
        )
        for term in terms
    )


def unschedulable_reason(cluster: Cluster, name: str) -> str | None:
    pod = cluster.client.get(Pod, name, namespace=NAMESPACE)
    for condition in (pod.status.conditions or []) if pod.status else []:
        if condition.type == "PodScheduled" and condition.reason == "Unschedulable":
            return condition.message or ""
    return None


@pytest.fixture
def namespace(cluster: Cluster, release: Release) -> Iterator[str]:
    """A namespace the webhook serves, emptied after each test: the one free physical GPU is
    then free again."""
    ensure_namespace(cluster, NAMESPACE)
    yield NAMESPACE
    for pod in cluster.client.list(Pod, namespace=NAMESPACE):
        assert pod.metadata is not None
        assert pod.metadata.name is not None
        cluster.client.delete(Pod, pod.metadata.name, namespace=NAMESPACE)
    wait_until(
        lambda: not list(cluster.client.list(Pod, namespace=NAMESPACE)),
        f"the pods of {NAMESPACE} to be gone",
    )


def test_plain_gpu_pods_bind_to_a_real_gpu_and_never_to_a_virtual_slot(
    cluster: Cluster, namespace: str
) -> None:
    # Many virtual slots are free on the frontends, physical GPUs only on FREE_GPU_NODES.
    free = sum(n.gpus for n in NODES if n.name in FREE_GPU_NODES)
    names = [f"cuda-{i}" for i in range(free + 2)]
    for name in names:
        cluster.client.create(gpu_pod(name))

    def settled() -> dict[str, str] | None:
        outcome = {}
        for name in names:
            pod = cluster.client.get(Pod, name, namespace=namespace)
            node = pod.spec.nodeName if pod.spec else None
            reason = None if node else unschedulable_reason(cluster, name)
            if not node and reason is None:
                return None
            outcome[name] = node or f"unschedulable: {reason}"
        return outcome

    outcome = wait_until(settled, "every plain GPU pod to be bound or found unschedulable")

    bound = {name: node for name, node in outcome.items() if not node.startswith("unsched")}
    assert set(bound.values()) <= FREE_GPU_NODES, outcome
    assert len(bound) == free, outcome
    for name in set(names) - set(bound):
        assert "didn't match Pod's node affinity" in outcome[name], outcome[name]


def test_a_plain_gpu_pods_own_affinity_is_kept_and_still_excludes_virtual_slots(
    cluster: Cluster, namespace: str
) -> None:
    real = sorted(FREE_GPU_NODES)[0]
    frontend = sorted(GPU_LESS_FRONTEND_NODES)[0]
    pod = gpu_pod("pinned-by-name")
    assert pod.spec is not None
    # The pod's own choice, two terms: a frontend node or the free GPU node, by node name.
    own = [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [name]}]}
        for name in (frontend, real)
    ]
    pod.spec.affinity = {  # type: ignore[assignment]
        "nodeAffinity": {REQUIRED: {"nodeSelectorTerms": own}}
    }

    cluster.client.create(pod)

    assert cluster.scheduled_node(namespace, "pinned-by-name") == real
    stored = cluster.client.get(Pod, "pinned-by-name", namespace=namespace)
    assert keeps_off_frontends(stored)
    terms = node_terms(stored)
    assert len(terms) == 2 * len(own)  # each own term once per label that rules out a frontend
    assert all({"matchFields": [f.to_dict() for f in t.matchFields or []]} in own for t in terms)


def test_a_gvirtus_pod_still_binds_to_a_frontend_node(cluster: Cluster, namespace: str) -> None:
    cluster.client.create(gpu_pod("gvirtus-app", labels={ENABLE_LABEL: "true"}))

    assert cluster.scheduled_node(namespace, "gvirtus-app") in FRONTEND_NODES
    stored = cluster.client.get(Pod, "gvirtus-app", namespace=namespace)
    assert not keeps_off_frontends(stored)


def test_only_pods_that_request_the_gpu_are_sent_to_the_guard(
    cluster: Cluster, release: Release, namespace: str
) -> None:
    # The match condition is CEL the API server evaluates: a pod without the GPU never reaches
    # the webhook, one asking for it in an init container only does.
    no_gpu = labelled_pod("no-gpu", namespace, PLAIN)
    init_gpu = labelled_pod("init-gpu", namespace, PLAIN)
    assert init_gpu.spec is not None
    init_gpu.spec.initContainers = [
        Container(name="warm-up", image="registry.example.com/app:1", resources=GPU_LIMIT)
    ]

    before = release.admissions()
    untouched = cluster.client.create(no_gpu, dry_run=True)
    assert release.admissions() == before
    guarded = cluster.client.create(init_gpu, dry_run=True)
    assert release.admissions() == before + 1

    assert node_terms(untouched) == []
    assert keeps_off_frontends(guarded)


@pytest.mark.parametrize("excluded", [OPTED_OUT, "gvirtus-system", "kube-system"])
def test_a_plain_gpu_pod_in_an_excluded_namespace_is_untouched(
    cluster: Cluster, release: Release, namespace: str, excluded: str
) -> None:
    ensure_namespace(cluster, OPTED_OUT, {"gvirtus.io/injection": "disabled"})
    before = release.admissions()

    stored = cluster.client.create(gpu_pod("elsewhere", excluded), dry_run=True)

    assert node_terms(stored) == []
    assert release.admissions() == before
    # The same pod where the webhook serves is guarded.
    assert keeps_off_frontends(cluster.client.create(gpu_pod("elsewhere"), dry_run=True))
