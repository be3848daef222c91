"""The controller's loop against a real kube-apiserver and etcd: what it writes, when, and why."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from gvirtus_kai_common.gvirtus import (
    BACKEND_ANNOTATION,
    BACKEND_GATE,
    PROPERTIES_ANNOTATION,
    THREADS_ANNOTATION,
    properties_json,
)
from lightkube import AsyncClient
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.models.policy_v1 import PodDisruptionBudgetSpec
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Pod
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.resources.scheduling_v1 import PriorityClass
from lightkube.types import PatchType

from tests.cluster.kube import NODES
from tests.controller.conftest import Running, Scene, StartController
from tests.controller.kube import (
    Ready,
    assigned,
    backend_of,
    backend_slice,
    event_messages,
    events_of,
    eventually,
    gated_pod,
    owner_reference,
    pod_gone,
    told,
)

ASSIGNED = "gvirtus_controller_assignments_total"


async def test_pods_created_before_any_backend_wait_and_say_why(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await start_controller()
    await client.create(gated_pod(scene, "early"))

    messages = await told(client, scene, "early", "WaitingForBackend")
    assert messages == ["no ready GVirtuS backend (0 of 0 ready)"]
    assert await backend_of(client, scene, "early") is None


async def test_a_backend_that_becomes_ready_releases_the_waiting_pods(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await client.create(backend_slice(scene, "s1", [Ready("10.1.0.1", ready=False)]))
    running = await start_controller()
    await client.create(gated_pod(scene, "p1"))
    await told(client, scene, "p1", "WaitingForBackend")
    assert await event_messages(client, scene, "p1", "WaitingForBackend") == [
        "no ready GVirtuS backend (0 of 1 ready)"
    ]

    await client.replace(backend_slice(scene, "s1", [Ready("10.1.0.1")]))

    assert await assigned(client, scene, "p1") == ("10.1.0.1:9999")
    assert await counted([running], 1) == 1


async def test_the_assignment_writes_both_annotations_and_removes_only_its_gate(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await client.create(backend_slice(scene, "s1", [Ready("10.1.0.7")]))
    await start_controller()
    seen: list[tuple[bool, bool]] = []  # (gated, annotated) of every version of the pod

    async def record_versions() -> None:
        async for _, version in client.watch(Pod, namespace=scene.apps):
            assert version.metadata is not None
            assert version.spec is not None
            gates = [gate.name for gate in version.spec.schedulingGates or []]
            annotated = BACKEND_ANNOTATION in (version.metadata.annotations or {})
            seen.append((BACKEND_GATE in gates, annotated))

    recorder = asyncio.create_task(record_versions())
    await client.create(gated_pod(scene, "p", gates=["example.com/first", BACKEND_GATE]))

    await assigned(client, scene, "p")

    async def released_version_seen() -> bool:
        return (False, True) in seen

    await eventually(released_version_seen, "the released version in the watch")
    recorder.cancel()
    # Every version was either waiting without an address or released with one: one write.
    assert seen[0] == (True, False)
    assert set(seen) == {(True, False), (False, True)}
    pod = await client.get(Pod, "p", namespace=scene.apps)
    assert pod.metadata is not None
    assert pod.spec is not None
    annotations = pod.metadata.annotations or {}
    assert annotations[BACKEND_ANNOTATION] == "10.1.0.7:9999"
    assert annotations[PROPERTIES_ANNOTATION] == properties_json(
        "10.1.0.7", 9999, ["cudart", "cublas"]
    )
    assert (
        json.loads(annotations[PROPERTIES_ANNOTATION])["communicator"][0]["endpoint"]["port"]
        == "9999"
    )
    assert [gate.name for gate in pod.spec.schedulingGates or []] == ["example.com/first"]
    assert await event_messages(client, scene, "p", "BackendAssigned") == [
        "assigned GVirtuS backend 10.1.0.7:9999 (policy leastPods; 1 pod on it)"
    ]


async def test_least_pods_spreads_pods_evenly_over_the_backends(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    ips = [f"10.1.1.{i}" for i in range(1, 4)]
    await client.create(backend_slice(scene, "s1", [Ready(ip) for ip in ips]))
    await start_controller()
    for i in range(10):
        await client.create(gated_pod(scene, f"p{i}"))

    async def all_assigned() -> list[str] | None:
        found = [await backend_of(client, scene, f"p{i}") for i in range(10)]
        return None if None in found else [f for f in found if f]

    counts = Counter(await eventually(all_assigned, "every pod assigned"))
    assert set(counts) == {f"{ip}:9999" for ip in ips}
    assert max(counts.values()) - min(counts.values()) <= 1


async def test_full_backends_keep_pods_waiting_until_a_slot_frees_then_serve_by_priority(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    high = f"{scene.release}-high"
    await client.create(PriorityClass(metadata=ObjectMeta(name=high), value=1000))
    await client.create(backend_slice(scene, "s1", [Ready("10.1.2.1"), Ready("10.1.2.2")]))
    await start_controller(max_pods_per_backend=1)
    for name in ("first", "second"):
        await client.create(gated_pod(scene, name))
        await assigned(client, scene, name)
    await client.create(gated_pod(scene, "low"))
    await client.create(gated_pod(scene, "urgent", priority_class=high))

    for name in ("low", "urgent"):
        messages = await told(client, scene, name, "WaitingForBackend")
        assert messages == ["all 2 backends full (maxPodsPerBackend=1)"]

    await client.delete(Pod, "first", namespace=scene.apps)
    assert await assigned(client, scene, "urgent")
    assert await backend_of(client, scene, "low") is None


async def test_ipv6_only_backends_keep_pods_waiting_with_the_reason(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await client.create(backend_slice(scene, "v6", [Ready("fd00::10")], address_type="IPv6"))
    await start_controller()
    await client.create(gated_pod(scene, "p"))

    messages = await told(client, scene, "p", "WaitingForBackend")
    assert messages == [
        "no ready GVirtuS backend has an IPv4 address (1 of 1 ready, IPv6 only; "
        "GVirtuS connects to IPv4 addresses only)"
    ]
    assert await backend_of(client, scene, "p") is None


async def test_same_zone_adds_the_backends_zone_to_every_required_term(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await client.create(backend_slice(scene, "s1", [Ready("10.1.3.1", zone="zone-b")]))
    await start_controller(policy="sameZone")
    gpu_term = {"matchExpressions": [{"key": "example.com/gpu", "operator": "DoesNotExist"}]}
    spec = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        gpu_term,
                        {
                            "matchFields": [
                                {"key": "metadata.name", "operator": "In", "values": ["n1"]}
                            ]
                        },
                    ]
                },
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "preference": gpu_term}
                ],
            }
        }
    }
    await client.create(gated_pod(scene, "fenced", spec=spec))
    await client.create(gated_pod(scene, "free"))

    for name in ("fenced", "free"):
        await assigned(client, scene, name)
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-b"]}
    fenced = await client.get(Pod, "fenced", namespace=scene.apps)
    assert fenced.spec is not None
    assert fenced.spec.affinity is not None
    node_affinity = fenced.spec.affinity.nodeAffinity
    assert node_affinity is not None
    assert node_affinity.to_dict()["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [
            {"matchExpressions": [*gpu_term["matchExpressions"], zone]},
            {
                "matchExpressions": [zone],
                "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}],
            },
        ]
    }
    assert len(node_affinity.preferredDuringSchedulingIgnoredDuringExecution or []) == 1
    free = await client.get(Pod, "free", namespace=scene.apps)
    assert free.spec is not None
    assert free.spec.affinity is not None
    assert free.spec.affinity.to_dict() == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [zone]}]
            }
        }
    }


async def test_a_lost_backend_is_reported_to_its_pods_and_only_owned_pods_are_evicted(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    reference = await owner_reference(client, scene)
    await client.create(backend_slice(scene, "s1", [Ready("10.1.4.1")]))
    await start_controller(on_backend_loss="evict", backend_loss_grace_seconds=0.5)
    await client.create(gated_pod(scene, "owned", owner=reference))
    await client.create(gated_pod(scene, "bare"))
    for name in ("owned", "bare"):
        await assigned(client, scene, name)

    await client.delete(EndpointSlice, "s1", namespace=scene.release)

    await eventually(lambda: pod_gone(client, scene, "owned"), "the owned pod evicted")
    assert await event_messages(client, scene, "bare", "BackendLost") == [
        "GVirtuS backend 10.1.4.1:9999 is no longer ready; "
        "the pod has no controller to recreate it, so it is kept"
    ]
    assert await backend_of(client, scene, "bare") == "10.1.4.1:9999"


async def test_a_disruption_budget_holds_the_eviction_which_is_retried(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    reference = await owner_reference(client, scene)
    await client.create(
        PodDisruptionBudget(
            metadata=ObjectMeta(name="keep-one", namespace=scene.apps),
            spec=PodDisruptionBudgetSpec(
                minAvailable=1, selector=LabelSelector(matchLabels={scene.enable_label: "true"})
            ),
        )
    )
    await client.create(backend_slice(scene, "s1", [Ready("10.1.5.1")]))
    running = await start_controller(on_backend_loss="evict", backend_loss_grace_seconds=0)
    await client.create(gated_pod(scene, "guarded", owner=reference))
    await assigned(client, scene, "guarded")
    # Budgets only guard running pods (a Pending pod may always be evicted).
    await client.patch(
        Pod.Status, "guarded", {"status": {"phase": "Running"}}, namespace=scene.apps
    )

    await client.delete(EndpointSlice, "s1", namespace=scene.release)

    async def refused_twice() -> bool:
        return running.sample("gvirtus_controller_evictions_total", outcome="blocked") >= 2

    await eventually(refused_twice, "two evictions refused by the budget")
    assert await client.get(Pod, "guarded", namespace=scene.apps)
    await client.delete(PodDisruptionBudget, "keep-one", namespace=scene.apps)

    async def evicted() -> bool:
        return running.sample("gvirtus_controller_evictions_total", outcome="evicted") == 1

    await eventually(evicted, "the eviction let through once the budget is gone")


async def test_keep_mode_reports_the_loss_and_evicts_nothing(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await client.create(backend_slice(scene, "s1", [Ready("10.1.6.1")]))
    running = await start_controller(backend_loss_grace_seconds=0)
    await client.create(gated_pod(scene, "p"))
    await assigned(client, scene, "p")

    await client.replace(backend_slice(scene, "s1", [Ready("10.1.6.1", ready=False)]))

    assert await told(client, scene, "p", "BackendLost") == [
        "GVirtuS backend 10.1.6.1:9999 is no longer ready; the pod is kept "
        "(onBackendLoss=keep); delete it to get a ready backend"
    ]
    assert running.sample("gvirtus_controller_backends_lost_total") == 1
    assert await client.get(Pod, "p", namespace=scene.apps)


async def test_a_restarted_controller_rebuilds_its_state_and_never_assigns_twice(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await client.create(backend_slice(scene, "s1", [Ready("10.1.7.1"), Ready("10.1.7.2")]))
    first = await start_controller(max_pods_per_backend=2)
    for i in range(3):
        await client.create(gated_pod(scene, f"before-{i}"))
    for i in range(3):
        await assigned(client, scene, f"before-{i}")
    await first.halt()
    for i in range(3):
        await client.create(gated_pod(scene, f"after-{i}"))

    second = await start_controller(max_pods_per_backend=2)

    await assigned(client, scene, "after-0")
    waiting = await told(client, scene, "after-1", "WaitingForBackend")
    assert waiting == ["all 2 backends full (maxPodsPerBackend=2)"]
    assert await backend_of(client, scene, "after-2") is None
    assert await counted([second], 1) == 1
    for i in range(3):  # what the first controller wrote is left alone
        assert await event_messages(client, scene, f"before-{i}", "BackendAssigned") != []


async def test_two_controllers_racing_without_election_never_assign_a_pod_twice(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    for i in range(20):
        await client.create(gated_pod(scene, f"p{i}"))
    a = await start_controller()
    b = await start_controller()
    await client.create(backend_slice(scene, "s1", [Ready("10.1.8.1"), Ready("10.1.8.2")]))

    for i in range(20):
        await assigned(client, scene, f"p{i}")
    assert await counted([a, b], 20) == 20  # every other attempt met a 409 and re-read the pod


async def test_with_leader_election_only_the_leader_assigns_and_a_standby_takes_over(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await client.create(backend_slice(scene, "s1", [Ready("10.1.9.1")]))
    election = {"leader_election": True, "lease_duration_seconds": 2.0}
    a = await start_controller(identity="a", **election)
    await eventually(lambda: _leading(a), "a leads")
    b = await start_controller(identity="b", **election)
    for i in range(5):
        await client.create(gated_pod(scene, f"p{i}"))
    for i in range(5):
        await assigned(client, scene, f"p{i}")
    assert (await counted([a], 5), b.sample(ASSIGNED)) == (5, 0)

    await a.halt()  # a clean stop releases the Lease
    await eventually(lambda: _leading(b), "b leads")
    await client.create(gated_pod(scene, "later"))
    await assigned(client, scene, "later")
    assert await counted([b], 1) == 1
    lease = await client.get(Lease, "gvirtus-controller", namespace=scene.release)
    assert lease.spec is not None
    assert lease.spec.holderIdentity == "b"


async def test_a_standby_takes_over_when_the_leader_stops_renewing(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await client.create(backend_slice(scene, "s1", [Ready("10.1.12.1")]))
    election = {"leader_election": True, "lease_duration_seconds": 2.0}
    a = await start_controller(identity="a", **election)
    await eventually(lambda: _leading(a), "a leads")
    b = await start_controller(identity="b", **election)

    await a.crash()  # no release: b must wait for the Lease to expire
    await client.create(gated_pod(scene, "p"))

    await eventually(lambda: _leading(b), "b leads after the Lease expired")
    await assigned(client, scene, "p")
    assert await counted([b], 1) == 1
    lease = await client.get(Lease, "gvirtus-controller", namespace=scene.release)
    assert lease.spec is not None
    assert (lease.spec.holderIdentity, lease.spec.leaseTransitions) == ("b", 1)


async def _leading(running: Running) -> bool:
    return running.controller.leading


async def test_a_waiting_pod_is_told_once_per_distinct_reason(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await start_controller()
    await client.create(gated_pod(scene, "p"))
    await told(client, scene, "p", "WaitingForBackend")
    await asyncio.sleep(1.5)  # several passes over the waiting pods

    await client.create(backend_slice(scene, "s1", [Ready("10.1.10.1", ready=False)]))

    async def both() -> list[Event] | None:
        events = await events_of(client, scene, "p")
        return events if len(events) == 2 else None

    events = await eventually(both, "a second WaitingForBackend event")
    assert sorted((e.message, e.count) for e in events) == [
        ("no ready GVirtuS backend (0 of 0 ready)", 1),
        ("no ready GVirtuS backend (0 of 1 ready)", 1),
    ]


async def test_a_refused_assignment_is_reported_and_retried_until_it_applies(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    # Annotations may total 256 KiB: this pod has no room left for the two the controller adds.
    crowded = {"example.com/blob": "x" * (256 * 1024 - 200)}
    await client.create(backend_slice(scene, "s1", [Ready("10.1.11.1")]))
    await start_controller()
    await client.create(gated_pod(scene, "crowded", annotations=crowded))

    (message,) = await told(client, scene, "crowded", "WaitingForBackend")
    assert message.startswith("the API server refused the backend assignment (422)")
    await client.patch(
        Pod,
        "crowded",
        {"metadata": {"annotations": {"example.com/blob": None}}},
        namespace=scene.apps,
        patch_type=PatchType.MERGE,
    )
    assert await assigned(client, scene, "crowded") == "10.1.11.1:9999"


async def test_a_gated_copy_of_an_assigned_pod_gets_a_backend_of_its_own(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await client.create(backend_slice(scene, "s1", [Ready("10.1.13.1"), Ready("10.1.13.2")]))
    await start_controller()
    await client.create(gated_pod(scene, "original"))
    first = await assigned(client, scene, "original")
    original = await client.get(Pod, "original", namespace=scene.apps)
    assert original.metadata is not None

    copied = dict(original.metadata.annotations or {})
    await client.create(gated_pod(scene, "copy", annotations=copied))

    second = await assigned(client, scene, "copy")
    assert {first, second} == {"10.1.13.1:9999", "10.1.13.2:9999"}


async def test_kube_scheduler_binds_the_pod_once_the_gate_is_gone(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await client.create(gated_pod(scene, "held"))
    assert await eventually(
        lambda: _scheduled_condition(client, scene, "held"), "the scheduler to see the gate"
    ) == ("False", "SchedulingGated")
    await client.create(backend_slice(scene, "s1", [Ready("10.1.14.1")]))

    await start_controller()

    await assigned(client, scene, "held")
    node = await eventually(lambda: _node_of(client, scene, "held"), "the pod bound to a node")
    assert node in {spec.name for spec in NODES}


async def test_kube_scheduler_honours_the_zone_the_controller_required(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    # No node of the test cluster is in this zone: the scheduler must say so, not bind the pod.
    await client.create(backend_slice(scene, "s1", [Ready("10.1.15.1", zone="zone-without-nodes")]))
    await start_controller(policy="sameZone")
    await client.create(gated_pod(scene, "zoned"))

    await assigned(client, scene, "zoned")

    async def unschedulable() -> tuple[str, str] | None:
        condition = await _scheduled_condition(client, scene, "zoned")
        return condition if condition == ("False", "Unschedulable") else None

    await eventually(unschedulable, "the scheduler to find no node in the zone")
    assert await _node_of(client, scene, "zoned") is None


async def _scheduled_condition(
    client: AsyncClient, scene: Scene, name: str
) -> tuple[str, str] | None:
    pod = await client.get(Pod, name, namespace=scene.apps)
    for condition in (pod.status.conditions or []) if pod.status else []:
        if condition.type == "PodScheduled":
            return condition.status, condition.reason or ""
    return None


async def _node_of(client: AsyncClient, scene: Scene, name: str) -> str | None:
    pod = await client.get(Pod, name, namespace=scene.apps)
    return pod.spec.nodeName if pod.spec else None


async def counted(controllers: list[Running], expected: int) -> float:
    """The assignments ``controllers`` counted, once they reach ``expected``: a pod is seen
    assigned through the API a moment before its controller has handled the patch's answer."""

    async def total() -> float:
        return sum(running.sample(ASSIGNED) for running in controllers)

    async def reached() -> bool:
        return await total() >= expected

    await eventually(reached, f"{expected} assignments counted")
    return await total()


async def test_the_threads_annotation_sets_the_entries_the_controller_writes(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await client.create(backend_slice(scene, "s1", [Ready("10.1.9.1")]))
    await start_controller(frontend_threads=5)
    await client.create(gated_pod(scene, "default"))
    await client.create(gated_pod(scene, "three", annotations={THREADS_ANNOTATION: "3"}))

    for name, threads in (("default", 5), ("three", 3)):
        await assigned(client, scene, name)
        pod = await client.get(Pod, name, namespace=scene.apps)
        assert pod.metadata is not None
        properties = (pod.metadata.annotations or {})[PROPERTIES_ANNOTATION]
        assert properties == properties_json("10.1.9.1", 9999, ["cudart", "cublas"], threads)


async def test_a_pod_whose_threads_annotation_turned_bad_waits_saying_so(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    # The webhook refuses a bad value at CREATE; annotations may still change while gated.
    await client.create(backend_slice(scene, "s1", [Ready("10.1.9.2")]))
    await start_controller()
    await client.create(gated_pod(scene, "bad", annotations={THREADS_ANNOTATION: "many"}))
    await client.create(gated_pod(scene, "good"))

    assert await assigned(client, scene, "good") == "10.1.9.2:9999"
    [message] = await told(client, scene, "bad", "WaitingForBackend")
    assert message.startswith(f"annotation {THREADS_ANNOTATION}='many' must be a whole number")
    assert await backend_of(client, scene, "bad") is None

    fixed = {"metadata": {"annotations": {THREADS_ANNOTATION: "8"}}}
    await client.patch(Pod, "bad", fixed, namespace=scene.apps, patch_type=PatchType.MERGE)

    assert await assigned(client, scene, "bad") == "10.1.9.2:9999"
