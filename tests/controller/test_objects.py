"""Reading Pods and EndpointSlices, and writing the assignment patch (pure functions)."""

from __future__ import annotations

import datetime
from typing import Any

from gvirtus_kai_common.gvirtus import BACKEND_GATE, THREADS_ANNOTATION
from gvirtus_kai_controller.objects import assignment_patch, pod_info, slice_endpoints, zone_terms
from gvirtus_kai_controller.placement import Backend, Endpoint, PodInfo
from lightkube.resources.core_v1 import Pod
from lightkube.resources.discovery_v1 import EndpointSlice

ZONE = "topology.kubernetes.io/zone"


def pod_from(manifest: dict[str, Any]) -> Pod:
    base: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "apps",
            "uid": "u1",
            "resourceVersion": "42",
            "creationTimestamp": "2026-01-02T03:04:05Z",
        },
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }
    for key, value in manifest.items():
        base[key] = {**base.get(key, {}), **value}
    pod = Pod.from_dict(base)
    assert isinstance(pod, Pod)
    return pod


def slice_from(
    address_type: str, endpoints: list[dict[str, Any]], port: str = "gvirtus"
) -> EndpointSlice:
    endpoint_slice = EndpointSlice.from_dict(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "s", "namespace": "gvirtus-system"},
            "addressType": address_type,
            "ports": [{"name": port, "port": 9999, "protocol": "TCP"}],
            "endpoints": endpoints,
        }
    )
    assert isinstance(endpoint_slice, EndpointSlice)
    return endpoint_slice


# --- pods ------------------------------------------------------------------------------------


def test_a_gated_pod_without_annotation_is_read_as_waiting_material() -> None:
    info = pod_from({"spec": {"schedulingGates": [{"name": BACKEND_GATE}], "priority": 7}})
    read = pod_info(info)
    assert (read.key, read.uid, read.priority, read.gated, read.backend) == (
        ("apps", "p"),
        "u1",
        7,
        True,
        None,
    )
    assert read.created == datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC).timestamp()
    assert read.resource_version == "42"


def test_only_our_gate_counts_as_gated() -> None:
    read = pod_info(pod_from({"spec": {"schedulingGates": [{"name": "example.com/other"}]}}))
    assert not read.gated
    assert read.gates == ("example.com/other",)


def test_the_backend_annotation_is_read() -> None:
    read = pod_info(
        pod_from({"metadata": {"annotations": {"gvirtus.io/backend": "10.0.0.1:9999"}}})
    )
    assert read.backend == "10.0.0.1:9999"


def test_terminal_and_terminating_pods_are_not_live() -> None:
    assert not pod_info(pod_from({"status": {"phase": "Succeeded"}})).live
    assert not pod_info(pod_from({"status": {"phase": "Failed"}})).live
    assert not pod_info(pod_from({"metadata": {"deletionTimestamp": "2026-01-02T03:04:06Z"}})).live
    assert pod_info(pod_from({"status": {"phase": "Running"}})).live


def test_a_controller_owner_is_recognised() -> None:
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "r1"}
    assert pod_info(
        pod_from({"metadata": {"ownerReferences": [{**owner, "controller": True}]}})
    ).controller_owned
    assert not pod_info(pod_from({"metadata": {"ownerReferences": [owner]}})).controller_owned


def test_zone_constraints_come_from_node_selector_and_required_affinity() -> None:
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["a", "b"]}]}
                ]
            }
        }
    }
    read = pod_info(pod_from({"spec": {"affinity": affinity, "nodeSelector": {ZONE: "b"}}}))
    assert [read.zones.allows(z) for z in ("a", "b", "c")] == [False, True, False]


# --- EndpointSlices --------------------------------------------------------------------------


def test_ready_ipv4_endpoints_with_the_named_port_are_backends_with_their_zone() -> None:
    endpoints = slice_endpoints(
        slice_from(
            "IPv4",
            [
                {
                    "addresses": ["10.0.0.1"],
                    "conditions": {"ready": True},
                    "zone": "z1",
                    "targetRef": {"kind": "Pod", "namespace": "gvirtus-system", "name": "b1"},
                },
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.3"]},  # no conditions: ready, as the API documents
            ],
        ),
        "gvirtus",
    )
    assert endpoints == [
        Endpoint("gvirtus-system/b1", True, backend=Backend("10.0.0.1", 9999, "z1")),
        Endpoint("10.0.0.2", False),
        Endpoint("10.0.0.3", True, backend=Backend("10.0.0.3", 9999)),
    ]


def test_ipv6_endpoints_are_never_backends() -> None:
    (endpoint,) = slice_endpoints(
        slice_from("IPv6", [{"addresses": ["fd00::10"], "conditions": {"ready": True}}]), "gvirtus"
    )
    assert endpoint == Endpoint("fd00::10", True, ipv4=False, backend=None)


def test_a_slice_without_the_named_port_gives_no_backend() -> None:
    (endpoint,) = slice_endpoints(
        slice_from("IPv4", [{"addresses": ["10.0.0.1"]}], port="http"), "gvirtus"
    )
    assert endpoint == Endpoint("10.0.0.1", True, ipv4=True, backend=None)


# --- the assignment patch --------------------------------------------------------------------


def waiting(**fields: Any) -> PodInfo:
    return PodInfo("apps", "p", "u1", 0.0, gated=True, resource_version="42", **fields)


def test_the_patch_is_guarded_by_resource_version_and_writes_both_annotations() -> None:
    patch = assignment_patch(
        waiting(gates=(BACKEND_GATE,)), Backend("10.0.0.1", 9999), "{}", pin_zone=False
    )
    assert patch == {
        "metadata": {
            "resourceVersion": "42",
            "annotations": {"gvirtus.io/backend": "10.0.0.1:9999", "gvirtus.io/properties": "{}"},
        },
        "spec": {"schedulingGates": None},
    }


def test_the_patch_removes_only_our_gate() -> None:
    pod = waiting(gates=("a.io/first", BACKEND_GATE, "b.io/last"))
    patch = assignment_patch(pod, Backend("10.0.0.1", 9999), "{}", pin_zone=False)
    assert patch["spec"]["schedulingGates"] == [{"name": "a.io/first"}, {"name": "b.io/last"}]


def test_same_zone_patch_adds_required_zone_affinity() -> None:
    patch = assignment_patch(
        waiting(gates=(BACKEND_GATE,)), Backend("10.0.0.1", 9999, "z1"), "{}", pin_zone=True
    )
    assert patch["spec"]["affinity"] == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["z1"]}]}
                ]
            }
        }
    }


def test_a_backend_without_zone_gets_no_affinity() -> None:
    patch = assignment_patch(waiting(), Backend("10.0.0.1", 9999), "{}", pin_zone=True)
    assert "affinity" not in patch["spec"]


def test_zone_requirement_is_appended_to_every_existing_term() -> None:
    gpu = {"key": "example.com/gpu", "operator": "Exists"}
    fast = {"key": "example.com/disk", "operator": "In", "values": ["ssd"]}
    terms: list[dict[str, Any]] = [
        {"matchExpressions": [gpu]},
        {"matchExpressions": [fast], "matchFields": []},
    ]
    zone = {"key": ZONE, "operator": "In", "values": ["z1"]}
    assert zone_terms(terms, "z1") == [
        {"matchExpressions": [gpu, zone]},
        {"matchExpressions": [fast, zone], "matchFields": []},
    ]


def test_a_term_with_only_match_fields_gets_match_expressions() -> None:
    field = {"key": "metadata.name", "operator": "In", "values": ["n1"]}
    assert zone_terms([{"matchFields": [field]}], "z1") == [
        {
            "matchFields": [field],
            "matchExpressions": [{"key": ZONE, "operator": "In", "values": ["z1"]}],
        }
    ]


def test_zone_terms_are_idempotent() -> None:
    once = zone_terms([], "z1")
    assert zone_terms(once, "z1") == once


def test_a_zone_that_is_no_label_value_is_ignored() -> None:
    # The API server stores any zone text in an EndpointSlice; a node affinity needs a label value.
    (endpoint,) = slice_endpoints(
        slice_from("IPv4", [{"addresses": ["10.0.0.1"], "zone": "not a label!"}]), "gvirtus"
    )
    assert endpoint.backend == Backend("10.0.0.1", 9999, None)


def test_the_threads_annotation_is_read() -> None:
    read = pod_info(pod_from({"metadata": {"annotations": {THREADS_ANNOTATION: "8"}}}))
    assert (read.threads, read.problem) == (8, None)


def test_a_pod_without_the_threads_annotation_takes_the_default() -> None:
    assert (pod_info(pod_from({})).threads, pod_info(pod_from({})).problem) == (None, None)


def test_a_bad_threads_annotation_is_the_pods_problem_saying_what_fits() -> None:
    # Annotations may change after admission: the webhook cannot have refused this one.
    read = pod_info(pod_from({"metadata": {"annotations": {THREADS_ANNOTATION: "0"}}}))
    assert read.threads is None
    assert read.problem == (
        f"annotation {THREADS_ANNOTATION}='0' must be a whole number from 1 to 512: the CUDA "
        "threads of one program (each needs its own GVirtuS communicator entry); fix the "
        "annotation to get a backend"
    )
