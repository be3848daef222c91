"""Kubernetes objects in and out, as pure functions: reading Pods and EndpointSlices into what
placement needs, and writing the one patch that assigns a backend."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from gvirtus_kai_common.gvirtus import (
    BACKEND_ANNOTATION,
    BACKEND_GATE,
    PROPERTIES_ANNOTATION,
    THREADS_ANNOTATION,
    parse_threads,
)
from gvirtus_kai_common.labels import label_value_problem
from lightkube.models.core_v1 import NodeSelectorTerm
from lightkube.resources.core_v1 import Pod
from lightkube.resources.discovery_v1 import EndpointSlice

from gvirtus_kai_controller.placement import (
    ANY_ZONE,
    Backend,
    Endpoint,
    PodInfo,
    ZoneConstraint,
    ZoneTerm,
)

ZONE_LABEL = "topology.kubernetes.io/zone"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def pod_info(pod: Pod) -> PodInfo:
    """What placement needs of ``pod``; raises ValueError for a pod without name or uid."""
    metadata = pod.metadata
    if metadata is None or not metadata.name or not metadata.uid:
        raise ValueError("pod without metadata.name or metadata.uid")
    spec = pod.spec
    annotations = metadata.annotations or {}
    gates = tuple(g.name for g in (spec.schedulingGates or [])) if spec else ()
    phase = pod.status.phase if pod.status else None
    created = metadata.creationTimestamp.timestamp() if metadata.creationTimestamp else 0.0
    terms = _required_terms(pod)
    threads, problem = _threads(annotations)
    return PodInfo(
        namespace=metadata.namespace or "default",
        name=metadata.name,
        uid=metadata.uid,
        created=created,
        priority=(spec.priority or 0) if spec else 0,
        gated=BACKEND_GATE in gates,
        backend=annotations.get(BACKEND_ANNOTATION),
        # A terminating pod frees its slot at once: without a kubelet (or with a stuck one) it
        # may stay terminating for long, and its replacement needs the room.
        live=metadata.deletionTimestamp is None and phase not in TERMINAL_PHASES,
        controller_owned=any(ref.controller for ref in metadata.ownerReferences or []),
        zones=_zone_constraint(spec.nodeSelector if spec else None, terms),
        resource_version=metadata.resourceVersion or "",
        gates=gates,
        node_selector_terms=tuple(term.to_dict() for term in terms),
        threads=threads,
        problem=problem,
        ip=pod.status.podIP if pod.status and pod.status.podIP else None,
    )


def _threads(annotations: Mapping[str, str]) -> tuple[int | None, str | None]:
    """The pod's ``gvirtus.io/threads``, or why it cannot be used (set after admission)."""
    value = annotations.get(THREADS_ANNOTATION)
    if value is None:
        return None, None
    try:
        return parse_threads(value), None
    except ValueError as error:
        return None, f"{error}; fix the annotation to get a backend"


def _required_terms(pod: Pod) -> list[NodeSelectorTerm]:
    affinity = pod.spec.affinity if pod.spec else None
    node_affinity = affinity.nodeAffinity if affinity else None
    required = (
        node_affinity.requiredDuringSchedulingIgnoredDuringExecution if node_affinity else None
    )
    return list(required.nodeSelectorTerms or []) if required else []


def _zone_constraint(
    node_selector: Mapping[str, str] | None, terms: Sequence[NodeSelectorTerm]
) -> ZoneConstraint:
    zone = (node_selector or {}).get(ZONE_LABEL)
    zone_terms = tuple(
        ZoneTerm(
            tuple(
                (expression.operator, frozenset(expression.values or ()))
                for expression in term.matchExpressions or []
                if expression.key == ZONE_LABEL
            )
        )
        for term in terms
    )
    if zone is None and all(not term.requirements for term in zone_terms):
        return ANY_ZONE
    return ZoneConstraint(node_selector=zone, terms=zone_terms)


def slice_endpoints(
    endpoint_slice: EndpointSlice, port_name: str, agent_port_name: str = "agent"
) -> list[Endpoint]:
    """The endpoints of one EndpointSlice; those that can serve GVirtuS carry a ``Backend``,
    with the port of its load agent when the slice names one."""
    port = _named_port(endpoint_slice, port_name)
    agent_port = _named_port(endpoint_slice, agent_port_name)
    is_ipv4 = endpoint_slice.addressType == "IPv4"
    endpoints = []
    for endpoint in endpoint_slice.endpoints or []:
        if not endpoint.addresses:
            continue
        # The API documents an unset ready condition as ready.
        ready = endpoint.conditions is None or endpoint.conditions.ready is not False
        ref = endpoint.targetRef
        identity = f"{ref.namespace}/{ref.name}" if ref and ref.name else endpoint.addresses[0]
        address = next((a for a in endpoint.addresses if _is_ipv4(a)), None) if is_ipv4 else None
        backend = None
        if ready and address is not None and port is not None:
            backend = Backend(address, port, _zone(endpoint.zone), agent_port)
        endpoints.append(Endpoint(identity, ready, ipv4=address is not None, backend=backend))
    return endpoints


def _named_port(endpoint_slice: EndpointSlice, name: str) -> int | None:
    return next((p.port for p in endpoint_slice.ports or [] if p.name == name and p.port), None)


def _zone(zone: str | None) -> str | None:
    """The endpoint's zone if a node affinity can name it (a label value), else None."""
    return zone if zone and label_value_problem(zone) is None else None


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def assignment_patch(
    pod: PodInfo, backend: Backend, properties: str, *, pin_zone: bool
) -> dict[str, Any]:
    """The JSON merge patch that assigns ``backend`` to ``pod`` in one write.

    ``metadata.resourceVersion`` makes it conditional: the API server answers 409 Conflict if
    the pod changed since it was read, so the lists written whole below (the other gates, the
    node-selector terms) are exactly the ones read, and a pod is never assigned twice.
    """
    remaining = [{"name": gate} for gate in pod.gates if gate != BACKEND_GATE]
    spec: dict[str, Any] = {"schedulingGates": remaining or None}
    if pin_zone and backend.zone:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": zone_terms(pod.node_selector_terms, backend.zone)
                }
            }
        }
    return {
        "metadata": {
            "resourceVersion": pod.resource_version,
            "annotations": {BACKEND_ANNOTATION: backend.address, PROPERTIES_ANNOTATION: properties},
        },
        "spec": spec,
    }


def zone_terms(terms: Sequence[Mapping[str, Any]], zone: str) -> list[dict[str, Any]]:
    """Required node-selector terms that also demand ``zone``.

    Terms are ORed, so the zone requirement is appended to every term (never added as a term of
    its own, which would loosen them). While a pod is gated the API server accepts exactly this:
    requirements appended to existing terms, or terms set where there were none.
    """
    requirement = {"key": ZONE_LABEL, "operator": "In", "values": [zone]}
    if not terms:
        return [{"matchExpressions": [requirement]}]
    merged = []
    for term in terms:
        expressions = list(term.get("matchExpressions") or [])
        if requirement not in expressions:
            expressions.append(requirement)
        merged.append({**term, "matchExpressions": expressions})
    return merged
