"""Objects and waits for the loop tests: gated pods as the webhook leaves them, backend
EndpointSlices as the EndpointSlice controller writes them, and Events as kubectl shows them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gvirtus_kai_common.gvirtus import BACKEND_ANNOTATION, BACKEND_GATE
from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.core_v1 import ConfigMap, Event, Pod, ServiceAccount
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.resources.rbac_authorization_v1 import (
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
)

from tests.controller.conftest import Scene

T = TypeVar("T")
WAIT = 20.0
CONTROLLER_ACCOUNT = "gvirtus-controller"


@dataclass(frozen=True)
class Ready:
    """One backend endpoint: a pod IP, ready or not, in a zone."""

    ip: str
    ready: bool = True
    zone: str | None = None


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, within: float = WAIT
) -> T:
    """Poll ``check`` until it returns something truthy (not None, False or empty)."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what}; last: {last!r}")


def gated_pod(
    scene: Scene,
    name: str,
    *,
    gates: Sequence[str] = (BACKEND_GATE,),
    priority_class: str | None = None,
    owner: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> Pod:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": scene.apps,
        "labels": {scene.enable_label: "true"},
        "annotations": annotations or {},
    }
    if owner is not None:
        metadata["ownerReferences"] = [{**owner, "controller": True}]
    pod_spec: dict[str, Any] = {
        "schedulingGates": [{"name": gate} for gate in gates],
        "containers": [{"name": "app", "image": "registry.test/app:1"}],
        **(spec or {}),
    }
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    pod = Pod.from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec})
    assert isinstance(pod, Pod)
    return pod


def backend_slice(
    scene: Scene,
    name: str,
    endpoints: Sequence[Ready],
    *,
    address_type: str = "IPv4",
    port_name: str = "gvirtus",
    service: str = "gvirtus-backend-headless",
    port: int = 9999,
    agent_port: int | None = None,
) -> EndpointSlice:
    """``agent_port``: each endpoint's load agent listens there (the port named ``agent``)."""
    ports: list[dict[str, Any]] = [{"name": port_name, "port": port, "protocol": "TCP"}]
    if agent_port is not None:
        ports.append({"name": "agent", "port": agent_port, "protocol": "TCP"})
    endpoint_slice = EndpointSlice.from_dict(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": scene.release,
                "labels": {
                    "kubernetes.io/service-name": service,
                    "endpointslice.kubernetes.io/managed-by": "tests.gvirtus.io",
                },
            },
            "addressType": address_type,
            "ports": ports,
            "endpoints": [
                {
                    "addresses": [endpoint.ip],
                    "conditions": {"ready": endpoint.ready},
                    **({"zone": endpoint.zone} if endpoint.zone else {}),
                    "targetRef": {
                        "kind": "Pod",
                        "namespace": scene.release,
                        "name": f"backend-{endpoint.ip.replace('.', '-').replace(':', '-')}",
                    },
                }
                for endpoint in endpoints
            ],
        }
    )
    assert isinstance(endpoint_slice, EndpointSlice)
    return endpoint_slice


async def backend_of(client: AsyncClient, scene: Scene, name: str) -> str | None:
    """The pod's backend annotation once its gate is gone; None while it is gated."""
    pod = await client.get(Pod, name, namespace=scene.apps)
    assert pod.metadata is not None
    assert pod.spec is not None
    gates = [gate.name for gate in pod.spec.schedulingGates or []]
    address = (pod.metadata.annotations or {}).get(BACKEND_ANNOTATION)
    return None if BACKEND_GATE in gates else address


async def events_of(client: AsyncClient, scene: Scene, pod: str) -> list[Event]:
    return [
        event
        async for event in client.list(
            Event, namespace=scene.apps, fields={"involvedObject.name": pod}
        )
    ]


async def event_messages(client: AsyncClient, scene: Scene, pod: str, reason: str) -> list[str]:
    return [
        event.message or ""
        for event in await events_of(client, scene, pod)
        if event.reason == reason
    ]


async def assigned(client: AsyncClient, scene: Scene, pod: str) -> str:
    """Wait until ``pod`` has a backend; its address."""
    return await eventually(lambda: backend_of(client, scene, pod), f"{pod} assigned")


async def told(client: AsyncClient, scene: Scene, pod: str, reason: str) -> list[str]:
    """Wait until ``pod`` has Events with ``reason``; their messages."""
    return await eventually(
        lambda: event_messages(client, scene, pod, reason), f"a {reason} event for {pod}"
    )


async def owner_reference(client: AsyncClient, scene: Scene) -> dict[str, Any]:
    """A controller owner for pods (a ConfigMap serves: nothing acts on the reference here)."""
    owner = await client.create(ConfigMap(metadata=ObjectMeta(name="owner", namespace=scene.apps)))
    assert owner.metadata is not None
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}


async def pod_gone(client: AsyncClient, scene: Scene, name: str) -> bool:
    try:
        await client.get(Pod, name, namespace=scene.apps)
    except ApiError as error:
        return error.status.code == 404
    return False


async def grant_contract_rbac(client: AsyncClient, scene: Scene) -> None:
    """The controller's ServiceAccount in the release namespace, bound to exactly the RBAC of
    the contract (the chart renders the same; tests/cluster checks the chart's objects)."""
    name = f"{scene.release}.controller"
    account = ObjectMeta(name=CONTROLLER_ACCOUNT, namespace=scene.release)
    await client.create(ServiceAccount(metadata=account))
    subject = [Subject(kind="ServiceAccount", name=CONTROLLER_ACCOUNT, namespace=scene.release)]
    await client.create(
        ClusterRole(
            metadata=ObjectMeta(name=name),
            rules=[
                PolicyRule(
                    apiGroups=[""], resources=["pods"], verbs=["get", "list", "watch", "patch"]
                ),
                PolicyRule(apiGroups=[""], resources=["events"], verbs=["create", "patch"]),
                PolicyRule(apiGroups=[""], resources=["pods/eviction"], verbs=["create"]),
            ],
        )
    )
    await client.create(
        ClusterRoleBinding(
            metadata=ObjectMeta(name=name),
            roleRef=RoleRef(apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name=name),
            subjects=subject,
        )
    )
    await client.create(
        Role(
            metadata=account,
            rules=[
                PolicyRule(
                    apiGroups=["discovery.k8s.io"],
                    resources=["endpointslices"],
                    verbs=["get", "list", "watch"],
                ),
                PolicyRule(
                    apiGroups=["coordination.k8s.io"],
                    resources=["leases"],
                    verbs=["get", "create", "update"],
                ),
            ],
        )
    )
    await client.create(
        RoleBinding(
            metadata=ObjectMeta(name=CONTROLLER_ACCOUNT, namespace=scene.release),
            roleRef=RoleRef(
                apiGroup="rbac.authorization.k8s.io", kind="Role", name=CONTROLLER_ACCOUNT
            ),
            subjects=subject,
        )
    )
