"""Placement end to end on the real control plane: the chart installed, the real webhook and
``gvirtus-controller`` running as local processes with the chart's settings (the controller with
its ServiceAccount's token), backend pods of the chart's DaemonSet marked Ready or not as a kubelet
would (status subresource), and the cluster DNS answering the headless backend Service from the
ready endpoints, as CoreDNS would.

- a labelled pod comes back from admission gated, with no address, and waits (Event
  ``WaitingForBackend``) while no backend is ready; once one is, the controller writes that backend
  pod's IP and container port and removes the gate, and kube-scheduler binds the pod to a
  frontend node, never before the address is on the pod;
- with two ready backends, pods are spread over both (``leastPods``);
- a sed pod is gated and released the same way, its wrapper reading the address the controller
  writes from a downward-API variable;
- ``maxPodsPerBackend`` and ``sameZone`` hold for a mix of mount and sed pods;
- a KAI-Scheduler pod gets the same gate and the same release (no KAI scheduler runs here, so it
  stays unbound);
- with the controller disabled, the webhook pins pods (sed and mount) at admission through DNS,
  and refuses them while no backend is ready.

The backends get addresses no other module uses: pods left pinned by earlier modules name other
addresses, so they count as load on no backend here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Node, Pod
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from tests.cluster.kube import BACKEND, FRONTEND_NODES, GPU, Cluster, wait_until
from tests.cluster.release import (
    ENABLE_LABEL,
    PROPERTIES_ANNOTATION,
    Release,
    ensure_namespace,
)

NAMESPACE = "placement-flow"
GATE = "gvirtus.io/backend"
BACKEND_ANNOTATION = "gvirtus.io/backend"
ZONE = "topology.kubernetes.io/zone"
SED: dict[str, Any] = {
    "annotations": {"gvirtus.io/strategy": "sed"},
    "command": ["python3", "train.py"],
}
CONTAINER_PORT = "9999"  # the chart's backend.containerPort
# Opted in as a second backend for the spreading test (the labeler is not running to undo it).
SECOND_BACKEND_NODE = "gpu-not-opted-in"
# Documentation-range addresses of this module's backend pods, one per GPU node.
ADDRESSES = {"gpu-backend": "203.0.113.131", SECOND_BACKEND_NODE: "203.0.113.132"}


@dataclass
class Flow:
    cluster: Cluster
    release: Release

    @property
    def headless(self) -> tuple[str, str]:
        """(namespace, name) of the headless backend Service the webhook resolves."""
        name, namespace = self.release.webhook_settings()["BACKEND_HOST"].split(".")[:2]
        return namespace, name

    @property
    def backend_host(self) -> str:
        return self.release.webhook_settings()["BACKEND_HOST"]

    def backend_pods(self) -> dict[str, str]:
        return self.release.backend_pods()

    def set_ready(self, node: str, ready: bool) -> None:
        """The backend pod on ``node`` reports Ready (with its address) or not ready, as its
        kubelet would when the readiness probe passes or fails."""
        name = wait_until(lambda: self.backend_pods().get(node), f"the backend pod on {node}")
        if ready:
            self.cluster.mark_pod_running(self.release.namespace, name, ADDRESSES[node])
            return
        pod = self.cluster.client.get(Pod, name, namespace=self.release.namespace)
        if pod.status is None or not pod.status.podIP:
            return  # never started: no endpoint at all
        conditions = [
            {"type": kind, "status": "False", "reason": "ContainersNotReady"}
            for kind in ("ContainersReady", "Ready")
        ]
        self.cluster.client.patch(
            Pod.Status,
            name,
            {"status": {"conditions": conditions}},
            namespace=self.release.namespace,
            patch_type=PatchType.STRATEGIC,
        )

    def ready_addresses(self) -> set[str]:
        namespace, name = self.headless
        return {
            address
            for endpoint_slice in self.cluster.client.list(
                EndpointSlice, namespace=namespace, labels={"kubernetes.io/service-name": name}
            )
            for endpoint in endpoint_slice.endpoints or []
            if endpoint.conditions is None or endpoint.conditions.ready is not False
            for address in endpoint.addresses
        }

    def backends_ready(self, *nodes: str) -> set[str]:
        """Exactly the backends on ``nodes`` ready, published in EndpointSlices and in the
        cluster DNS; their addresses."""
        for node in self.backend_pods():
            self.set_ready(node, node in nodes)
        expected = {ADDRESSES[node] for node in nodes}
        wait_until(lambda: self.ready_addresses() == expected, f"ready endpoints {expected}")
        self.cluster.publish_service(*self.headless)
        return expected

    def ready_zones(self) -> set[str | None]:
        namespace, name = self.headless
        return {
            endpoint.zone
            for endpoint_slice in self.cluster.client.list(
                EndpointSlice, namespace=namespace, labels={"kubernetes.io/service-name": name}
            )
            for endpoint in endpoint_slice.endpoints or []
        }

    def pod(self, name: str) -> Pod:
        return self.cluster.client.get(Pod, name, namespace=NAMESPACE)

    def pinned(self) -> dict[str, str]:
        """Released pods of the namespace that are not terminating: name -> backend address."""
        pinned = {}
        for pod in self.cluster.client.list(Pod, namespace=NAMESPACE):
            assert pod.metadata is not None
            if pod.metadata.deletionTimestamp is None and GATE not in gates(pod):
                pinned[str(pod.metadata.name)] = pinned_address(pod)
        return pinned

    def create(self, name: str, dry_run: bool = False, **spec: Any) -> Pod:
        pod = Pod(
            metadata=ObjectMeta(
                name=name,
                namespace=NAMESPACE,
                labels={ENABLE_LABEL: "true", **spec.pop("labels", {})},
                annotations=spec.pop("annotations", None),
            ),
            spec=PodSpec(
                containers=[
                    Container(
                        name="app",
                        image="registry.example.com/cuda-app:1",
                        command=spec.pop("command", None),
                        resources={"limits": {GPU: "1"}},  # type: ignore[arg-type]
                    )
                ],
                **spec,
            ),
        )
        return self.cluster.client.create(pod, dry_run=dry_run)

    def events(self, name: str, reason: str) -> list[str]:
        return [
            event.message or ""
            for event in self.cluster.client.list(
                Event, namespace=NAMESPACE, fields={"involvedObject.name": name}
            )
            if event.reason == reason
        ]

    def released(self, name: str) -> Pod | None:
        """The pod once the controller removed the gate, else None."""
        pod = self.pod(name)
        return None if GATE in gates(pod) else pod

    def wait_released(self, name: str) -> Pod:
        return wait_until(lambda: self.released(name), f"pod {name} to be released")

    def delete_pods(self) -> None:
        for pod in self.cluster.client.list(Pod, namespace=NAMESPACE):
            assert pod.metadata is not None
            self.cluster.client.delete(Pod, str(pod.metadata.name), namespace=NAMESPACE)
        wait_until(
            lambda: not list(self.cluster.client.list(Pod, namespace=NAMESPACE)),
            f"the pods of {NAMESPACE} to be gone",
        )


def gates(pod: Pod) -> list[str]:
    return [gate.name for gate in (pod.spec.schedulingGates or [])] if pod.spec else []


def annotations_of(pod: Pod) -> dict[str, str]:
    return dict(pod.metadata.annotations or {}) if pod.metadata else {}


def pinned_address(pod: Pod) -> str:
    """The backend the pod names, checked against the frontend config its containers read."""
    value: str = annotations_of(pod)[BACKEND_ANNOTATION]
    address, _, port = value.rpartition(":")
    assert port == CONTAINER_PORT
    if is_sed(pod):
        assert_reads_the_backend_annotation(pod)
    else:
        config = json.loads(annotations_of(pod)[PROPERTIES_ANNOTATION])
        endpoints = {json.dumps(entry["endpoint"]) for entry in config["communicator"]}
        assert [json.loads(e) for e in endpoints] == [
            {"suite": "tcp/ip", "protocol": "tcp", "server_address": address, "port": port}
        ]
    return address


def is_sed(pod: Pod) -> bool:
    assert pod.spec is not None
    return (pod.spec.containers[0].command or [])[:2] == ["/bin/sh", "-c"]


def assert_reads_the_backend_annotation(pod: Pod) -> None:
    """A sed container: wrapped, with no address of its own, and the variable the kubelet fills
    from the pod's backend annotation when the container starts."""
    assert pod.spec is not None
    [app] = pod.spec.containers
    command = app.command or []
    assert command[4:] == ["python3", "train.py"]
    assert "server_address" in command[2]
    assert not any(address in command[2] for address in ADDRESSES.values())
    [variable] = [e for e in app.env or [] if e.name == "GVIRTUS_KAI_BACKEND"]
    assert variable.valueFrom is not None
    assert variable.valueFrom.fieldRef is not None
    assert variable.valueFrom.fieldRef.fieldPath == f"metadata.annotations['{BACKEND_ANNOTATION}']"


def label_node(cluster: Cluster, node: str, value: str | None, key: str = BACKEND) -> None:
    cluster.client.patch(
        Node, node, {"metadata": {"labels": {key: value}}}, patch_type=PatchType.MERGE
    )


@pytest.fixture(scope="module")
def flow(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """The chart with its defaults (controller enabled), the webhook and the controller running,
    and no backend ready yet."""
    release = Release(cluster)
    release.install()
    ensure_namespace(cluster, NAMESPACE)
    try:
        release.work = tmp_path_factory.mktemp("placement-flow")
        webhook_pods = wait_until(
            lambda: cluster.pods(release.namespace, release.selector("webhook")),
            "the webhook Deployment's pod",
        )
        for pod in webhook_pods:
            assert pod.metadata is not None
            cluster.mark_pod_running(release.namespace, str(pod.metadata.name), cluster.node_ip)
        release.restart_webhook()
        release.start_controller()
        yield Flow(cluster, release)
    finally:
        label_node(cluster, SECOND_BACKEND_NODE, "false")
        try:
            Flow(cluster, release).delete_pods()
        finally:
            release.uninstall()


@pytest.fixture
def flow_clean(flow: Flow) -> Flow:
    """No pod of an earlier test counts as load."""
    flow.delete_pods()
    return flow


def test_a_pod_waits_gated_until_a_backend_is_ready_then_is_pinned_and_bound(
    flow_clean: Flow,
) -> None:
    flow = flow_clean
    flow.backends_ready()  # none

    created = flow.create("waits")

    # Admission gave it the gate and the projection of an annotation that does not exist yet:
    # the API server accepted both, and no address was written.
    assert gates(created) == [GATE]
    assert not {BACKEND_ANNOTATION, PROPERTIES_ANNOTATION} & annotations_of(created).keys()
    assert created.spec is not None
    volumes = {volume.name: volume for volume in created.spec.volumes or []}
    projection = volumes["gvirtus-properties"].downwardAPI
    assert projection is not None
    [item] = projection.items or []
    assert item.fieldRef is not None
    assert item.fieldRef.fieldPath == f"metadata.annotations['{PROPERTIES_ANNOTATION}']"
    [message, *_] = wait_until(
        lambda: flow.events("waits", "WaitingForBackend"), "a WaitingForBackend event"
    )
    assert "no ready GVirtuS backend" in message
    waiting = flow.pod("waits")
    assert gates(waiting) == [GATE]
    assert waiting.spec is not None
    assert waiting.spec.nodeName is None  # the scheduler leaves a gated pod alone

    [address] = flow.backends_ready("gpu-backend")

    released = flow.wait_released("waits")
    assert pinned_address(released) == address
    assert wait_until(lambda: flow.events("waits", "BackendAssigned"), "a BackendAssigned event")
    assert flow.cluster.scheduled_node(NAMESPACE, "waits") in FRONTEND_NODES
    assert created.metadata is not None
    assert_address_before_binding(flow, "waits", str(created.metadata.resourceVersion), address)


def assert_address_before_binding(flow: Flow, name: str, since: str, address: str) -> None:
    """Every version of the pod since its creation that names a node also names the backend:
    the kubelet, which starts a pod only once it is bound, projects the controller's annotation."""
    bound = 0
    for _, pod in flow.cluster.client.watch(
        Pod,
        namespace=NAMESPACE,
        fields={"metadata.name": name},
        resource_version=since,
        server_timeout=10,
    ):
        assert pod.spec is not None
        if pod.spec.nodeName:
            bound += 1
            assert not gates(pod)
            assert pinned_address(pod) == address
            break
    assert bound == 1


def test_with_two_ready_backends_pods_are_spread_over_both(flow_clean: Flow) -> None:
    flow = flow_clean
    label_node(flow.cluster, SECOND_BACKEND_NODE, "true")  # the DaemonSet starts a second pod
    wait_until(lambda: SECOND_BACKEND_NODE in flow.backend_pods(), "a second backend pod")
    addresses = flow.backends_ready("gpu-backend", SECOND_BACKEND_NODE)

    names = [f"spread-{n}" for n in range(4)]
    for name in names:
        flow.create(name)
    pinned = Counter(pinned_address(flow.wait_released(name)) for name in names)

    assert pinned == dict.fromkeys(addresses, 2)  # leastPods: 2 and 2, never 3 and 1
    nodes = {flow.cluster.scheduled_node(NAMESPACE, name) for name in names}
    assert nodes <= FRONTEND_NODES


def test_a_sed_pod_waits_gated_and_is_released_like_a_mount_pod(flow_clean: Flow) -> None:
    flow = flow_clean
    flow.backends_ready()

    created = flow.create("sed-job", **SED)

    assert gates(created) == [GATE]  # no DNS lookup at admission
    assert BACKEND_ANNOTATION not in annotations_of(created)
    assert_reads_the_backend_annotation(created)
    wait_until(lambda: flow.events("sed-job", "WaitingForBackend"), "a WaitingForBackend event")

    [address] = flow.backends_ready("gpu-backend")

    assert pinned_address(flow.wait_released("sed-job")) == address
    assert flow.cluster.scheduled_node(NAMESPACE, "sed-job") in FRONTEND_NODES
    assert created.metadata is not None
    assert_address_before_binding(flow, "sed-job", str(created.metadata.resourceVersion), address)


@pytest.fixture
def zoned_flow(flow: Flow) -> Iterator[Flow]:
    """Both GPU nodes backends in zones a and b, the controller restarted with policy sameZone and
    maxPodsPerBackend 2."""
    cluster, release = flow.cluster, flow.release
    flow.delete_pods()
    zones = {"gpu-backend": "zone-a", SECOND_BACKEND_NODE: "zone-b"}
    for node, zone in zones.items():
        label_node(cluster, node, zone, ZONE)
    label_node(cluster, SECOND_BACKEND_NODE, "true")
    release.stop_controller()
    release.upgrade({"controller.policy": "sameZone", "controller.maxPodsPerBackend": 2})
    release.start_controller()
    try:
        wait_until(lambda: SECOND_BACKEND_NODE in flow.backend_pods(), "a second backend pod")
        flow.backends_ready()  # the slices are written again, now with the nodes' zones
        flow.backends_ready(*zones)
        wait_until(lambda: flow.ready_zones() == set(zones.values()), "zones on the endpoints")
        yield flow
    finally:
        flow.delete_pods()
        release.stop_controller()
        release.upgrade({})
        release.start_controller()
        for node in zones:
            label_node(cluster, node, None, ZONE)
        label_node(cluster, SECOND_BACKEND_NODE, "false")


def test_max_pods_per_backend_and_same_zone_hold_for_mount_and_sed_pods_alike(
    zoned_flow: Flow,
) -> None:
    flow = zoned_flow
    in_a: dict[str, Any] = {"nodeSelector": {ZONE: "zone-a"}}
    a = ADDRESSES["gpu-backend"]
    b = ADDRESSES[SECOND_BACKEND_NODE]

    flow.create("a-mount", **in_a)
    flow.create("a-sed", **in_a, **SED)
    assert {pinned_address(flow.wait_released(n)) for n in ("a-mount", "a-sed")} == {a}

    flow.create("a-sed-late", **in_a, **SED)  # backend a is full, b is in another zone
    [reason, *_] = wait_until(
        lambda: flow.events("a-sed-late", "WaitingForBackend"), "a-sed-late told why it waits"
    )
    assert reason == "all 1 backends full (maxPodsPerBackend=2)"

    flow.create("free-sed", **SED)
    flow.create("free-mount")
    for name in ("free-sed", "free-mount"):
        released = flow.wait_released(name)
        assert pinned_address(released) == b  # the one with room
        assert required_zones(released) == {"zone-b"}  # sameZone: the pod runs near it

    flow.create("free-late", **SED)
    [reason, *_] = wait_until(
        lambda: flow.events("free-late", "WaitingForBackend"), "free-late told why it waits"
    )
    assert reason == "all 2 backends full (maxPodsPerBackend=2)"
    assert flow.released("a-sed-late") is None

    flow.cluster.client.delete(Pod, "a-mount", namespace=NAMESPACE)

    # The freed slot goes to the older waiting pod, which may use it; the other still waits.
    assert pinned_address(flow.wait_released("a-sed-late")) == a
    assert flow.released("free-late") is None
    assert Counter(flow.pinned().values()) == {a: 2, b: 2}


def required_zones(pod: Pod) -> set[str]:
    assert pod.spec is not None
    assert pod.spec.affinity is not None
    assert pod.spec.affinity.nodeAffinity is not None
    required = pod.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution
    assert required is not None
    return {
        value
        for term in required.nodeSelectorTerms
        for expression in term.matchExpressions or []
        if expression.key == ZONE
        for value in expression.values or []
    }


def test_a_kai_scheduler_pod_gets_the_same_gate_and_release(flow_clean: Flow) -> None:
    flow = flow_clean
    flow.backends_ready()
    pod = flow.create(
        "kai-job", labels={"kai.scheduler/queue": "research"}, schedulerName="kai-scheduler"
    )
    assert gates(pod) == [GATE]
    wait_until(lambda: flow.events("kai-job", "WaitingForBackend"), "a WaitingForBackend event")

    [address] = flow.backends_ready("gpu-backend")

    released = flow.wait_released("kai-job")
    assert pinned_address(released) == address
    assert released.spec is not None
    assert released.spec.schedulerName == "kai-scheduler"
    assert released.spec.nodeName is None  # kube-scheduler leaves it to KAI, which is not here


@pytest.fixture
def dns_flow(flow: Flow) -> Iterator[Flow]:
    """The release upgraded to ``controller.enabled: false``: the webhook (placement dns) pins
    every pod at admission and no controller runs."""
    release = flow.release
    flow.delete_pods()
    release.stop_controller()
    release.upgrade({"controller.enabled": False})
    release.restart_webhook()
    try:
        yield flow
    finally:
        flow.delete_pods()
        release.upgrade({})
        release.restart_webhook()
        release.start_controller()


@pytest.mark.parametrize("strategy", ["mount", "sed"])
def test_without_the_controller_a_pod_is_pinned_at_admission_through_dns(
    dns_flow: Flow, strategy: str
) -> None:
    flow = dns_flow
    [address] = flow.backends_ready("gpu-backend")

    pod = flow.create(f"{strategy}-dns", **(SED if strategy == "sed" else {}))

    assert gates(pod) == []  # nobody would release a gate
    assert pinned_address(pod) == address
    assert flow.cluster.scheduled_node(NAMESPACE, f"{strategy}-dns") in FRONTEND_NODES


def test_without_the_controller_a_pod_is_refused_while_no_backend_is_ready(
    dns_flow: Flow,
) -> None:
    flow = dns_flow
    flow.backends_ready()

    def refusal() -> str | None:
        try:
            flow.create("refused", dry_run=True, **SED)
        except ApiError as error:
            return error.status.message or str(error)
        return None  # the webhook still holds the last answer, for the record's 1 s TTL

    message = wait_until(refusal, "the pod to be refused")
    assert f"no ready GVirtuS backend was found behind {flow.backend_host}" in message
