"""Demand a cluster autoscaler sees, on the real control plane: the chart installed with
``controller.demand`` enabled, the real webhook and ``gvirtus-controller`` running as local
processes, and the real kube-scheduler judging the placeholder pods.

Each backend takes two pods (``maxPodsPerBackend: 2``) and at most two placeholders exist. The
backends are filled, then more pods wait: placeholders appear only after the wait, never more
than the maximum, and the scheduler refuses them as Unschedulable (the session's one GPU of the
backend node is the backend's own). Fewer waiting pods, fewer placeholders; a GPU node that joins
with a Ready backend takes the rest, and the placeholders go; uninstalling the chart removes any
left. The tests run in order, each on the state the previous one left.

The backends get addresses no other module uses, so pods other modules left pinned are no load
on them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from lightkube import ApiError
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Pod
from lightkube.resources.discovery_v1 import EndpointSlice

from tests.cluster.kube import BACKEND, FRONTEND, GPU, GPU_PRESENT, Cluster, NodeSpec, wait_until
from tests.cluster.release import ENABLE_LABEL, Release, ensure_namespace

NAMESPACE = "demand"
GATE = "gvirtus.io/backend"
PLACEHOLDER_LABEL = "gvirtus.io/placeholder-for"
PER_BACKEND = 2
MAX_PLACEHOLDERS = 2
WAIT_SECONDS = 5
VALUES = {
    "controller.maxPodsPerBackend": PER_BACKEND,
    "controller.demand.enabled": True,
    "controller.demand.waitSeconds": WAIT_SECONDS,
    "controller.demand.maxPlaceholders": MAX_PLACEHOLDERS,
    "controller.demand.image": "localhost/pause:dev",
}
# A GPU node an autoscaler would add: opted in as a backend, room for a placeholder beside it.
JOINED = NodeSpec(
    "gpu-joined", {FRONTEND: "false", BACKEND: "true", GPU_PRESENT: "true"}, 2, "198.51.100.23"
)
JOINED_ADDRESS = "203.0.113.159"


@dataclass
class Demand:
    cluster: Cluster
    release: Release
    installed: bool = True

    @property
    def owner(self) -> str:
        return self.release.component_name("controller")

    def backend_pods(self) -> dict[str, str]:
        return self.release.backend_pods()

    def mark_ready(self, node: str, address: str) -> None:
        name = wait_until(lambda: self.backend_pods().get(node), f"the backend pod on {node}")
        self.cluster.mark_pod_running(self.release.namespace, name, address)

    def ready_addresses(self) -> set[str]:
        return {
            address
            for endpoint_slice in self.cluster.client.list(
                EndpointSlice,
                namespace=self.release.namespace,
                labels={"kubernetes.io/service-name": "gvirtus-backend-headless"},
            )
            for endpoint in endpoint_slice.endpoints or []
            if endpoint.conditions is None or endpoint.conditions.ready is not False
            for address in endpoint.addresses
        }

    def placeholders(self, *, terminating: bool = False) -> list[Pod]:
        pods = self.cluster.client.list(
            Pod, namespace=self.release.namespace, labels={PLACEHOLDER_LABEL: self.owner}
        )
        return [
            pod
            for pod in pods
            if terminating or (pod.metadata is not None and pod.metadata.deletionTimestamp is None)
        ]

    def create(self, name: str) -> None:
        pod = Pod(
            metadata=ObjectMeta(name=name, namespace=NAMESPACE, labels={ENABLE_LABEL: "true"}),
            spec=PodSpec(
                containers=[
                    Container(
                        name="app",
                        image="registry.example.com/cuda-app:1",
                        resources={"limits": {GPU: "1"}},  # type: ignore[arg-type]
                    )
                ]
            ),
        )
        self.cluster.client.create(pod)

    def gated(self, name: str) -> bool:
        pod = self.cluster.client.get(Pod, name, namespace=NAMESPACE)
        return pod.spec is not None and GATE in {g.name for g in pod.spec.schedulingGates or []}

    def wait_released(self, *names: str) -> None:
        for name in names:
            wait_until(functools.partial(self.released, name), f"pod {name} to be released")

    def released(self, name: str) -> bool:
        return not self.gated(name)

    def delete(self, *names: str) -> None:
        for name in names:
            self.cluster.client.delete(Pod, name, namespace=NAMESPACE)


def sample_counts(demand: Demand, seconds: float) -> list[int]:
    """The placeholder count, sampled every 0.1 s for ``seconds``."""
    counts = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        counts.append(len(demand.placeholders()))
        time.sleep(0.1)
    return counts


@pytest.fixture(scope="module")
def demand(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demand]:
    release = Release(cluster)
    release.install(VALUES)
    ensure_namespace(cluster, NAMESPACE)
    state = Demand(cluster, release)
    try:
        release.start_webhook(tmp_path_factory.mktemp("demand"))
        addresses = set()
        for number, node in enumerate(sorted(state.backend_pods()), start=150):
            state.mark_ready(node, f"203.0.113.{number}")
            addresses.add(f"203.0.113.{number}")
        wait_until(lambda: state.ready_addresses() == addresses, f"ready endpoints {addresses}")
        yield state
    finally:
        for pod in cluster.client.list(Pod, namespace=NAMESPACE):
            assert pod.metadata is not None
            cluster.client.delete(Pod, str(pod.metadata.name), namespace=NAMESPACE)
        if state.installed:
            release.uninstall()
        try:
            cluster.client.delete(Node, JOINED.name)
        except ApiError as error:
            if error.status.code != 404:
                raise


def test_placeholders_appear_after_the_wait_and_never_exceed_the_maximum(demand: Demand) -> None:
    fill = [f"fill-{i}" for i in range(PER_BACKEND * len(demand.backend_pods()))]
    for name in fill:
        demand.create(name)
    demand.wait_released(*fill)
    for i in range(5):  # five pods with no room: three backends missing, two placeholders
        demand.create(f"wait-{i}")

    # The wait counts from creation, in whole seconds: 2 s after it is safely too early.
    assert max(sample_counts(demand, 2)) == 0
    wait_until(lambda: len(demand.placeholders()) == MAX_PLACEHOLDERS, "two placeholders")
    assert max(sample_counts(demand, 3)) == MAX_PLACEHOLDERS
    assert all(demand.gated(f"wait-{i}") for i in range(5))


def test_the_scheduler_refuses_placeholders_as_unschedulable(demand: Demand) -> None:
    def refused(pod: Pod) -> bool:
        assert pod.metadata is not None
        fresh = demand.cluster.client.get(
            Pod, str(pod.metadata.name), namespace=demand.release.namespace
        )
        conditions = fresh.status.conditions or [] if fresh.status else []
        return any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in conditions
        )

    placeholders = demand.placeholders()
    assert len(placeholders) == MAX_PLACEHOLDERS
    for pod in placeholders:
        wait_until(functools.partial(refused, pod), "the scheduler to refuse a placeholder")
        assert pod.metadata is not None
        assert pod.spec is not None
        assert pod.spec.nodeName is None
        [owner] = pod.metadata.ownerReferences or []
        assert (owner.kind, owner.name) == ("Deployment", demand.owner)
        assert (pod.metadata.labels or {})["app.kubernetes.io/instance"] == demand.release.name
        assert pod.spec.nodeSelector == {BACKEND: "true", GPU_PRESENT: "true"}
        assert pod.spec.priority == -10
        [pause] = pod.spec.containers
        assert pause.image == "localhost/pause:dev"
        assert pause.resources is not None
        assert (pause.resources.requests or {})[GPU] == "1"


def test_fewer_waiting_pods_leave_fewer_placeholders(demand: Demand) -> None:
    demand.delete("wait-2", "wait-3", "wait-4")  # two left: one backend's worth
    wait_until(lambda: len(demand.placeholders()) == 1, "one placeholder")


def test_placeholders_go_once_a_backend_node_joins_and_takes_the_waiting_pods(
    demand: Demand,
) -> None:
    demand.cluster.add_node(JOINED)
    demand.mark_ready(JOINED.name, JOINED_ADDRESS)
    demand.wait_released("wait-0", "wait-1")
    wait_until(lambda: not demand.placeholders(), "the placeholders to be deleted")
    assert max(sample_counts(demand, 2)) == 0  # and none come back: nothing waits


def test_placeholders_are_gone_after_uninstall(demand: Demand) -> None:
    demand.create("late")  # every backend full again
    wait_until(lambda: len(demand.placeholders()) == 1, "a placeholder for the late pod")
    demand.release.uninstall()
    demand.installed = False
    wait_until(
        lambda: not demand.placeholders(terminating=True), "placeholders removed with the chart"
    )
