"""Which containers on the node hold our devices: the kubelet's PodResources API v1, ``List``.

The kubelet answers from its device manager's record of allocations, made when a pod is admitted
and kept until the pod is gone; it is what the kubelet re-uses when a container restarts, so it
is exactly the set of containers that may still need the CDI spec.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc

from gvirtus_kai_device_plugin.api import podresources_pb2, podresources_pb2_grpc
from gvirtus_kai_device_plugin.channels import describe, unix_channel

# A kubelet answers List from memory in milliseconds; one that does not within this is wedged.
LIST_TIMEOUT_SECONDS = 2.0


class PodResourcesUnavailable(Exception):
    """The kubelet could not be asked; the message says why."""


@dataclass(frozen=True)
class Holder:
    """A container the kubelet says holds devices of our resource."""

    namespace: str
    pod: str
    container: str
    device_ids: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


def holders(
    response: podresources_pb2.ListPodResourcesResponse, resource_name: str
) -> list[Holder]:
    """The containers in ``response`` holding devices of ``resource_name`` (other device
    plugins' resources and DRA claims are not ours)."""
    found = []
    for pod in response.pod_resources:
        for container in pod.containers:
            ours = [d for d in container.devices if d.resource_name == resource_name]
            if ours:
                ids = tuple(i for d in ours for i in d.device_ids)
                found.append(Holder(pod.namespace, pod.name, container.name, ids))
    return found


async def list_holders(socket_path: Path, resource_name: str) -> list[Holder]:
    """Ask the kubelet on ``socket_path``; raises PodResourcesUnavailable when it cannot be."""
    try:
        mode = os.stat(socket_path).st_mode
    except OSError as error:
        raise PodResourcesUnavailable(f"{socket_path}: {error.strerror or error}") from error
    if not stat.S_ISSOCK(mode):
        raise PodResourcesUnavailable(f"{socket_path} is not a socket")
    try:
        async with unix_channel(socket_path) as channel:
            stub = podresources_pb2_grpc.PodResourcesListerStub(channel)
            response: podresources_pb2.ListPodResourcesResponse = await stub.List(
                podresources_pb2.ListPodResourcesRequest(), timeout=LIST_TIMEOUT_SECONDS
            )
    except grpc.aio.AioRpcError as error:
        raise PodResourcesUnavailable(f"List on {socket_path}: {describe(error)}") from error
    return holders(response, resource_name)
