"""A kubelet emulator: the Registration side of the device plugin API on a real unix socket.

Like the kubelet's device manager it serves ``Registration`` on ``kubelet.sock`` in the plugin
directory, checks the API version, records each RegisterRequest, and then dials the endpoint the
plugin named and calls ``GetDevicePluginOptions`` and ``ListAndWatch``, keeping the stream open
and recording every device list it receives. ``allocate`` and ``preferred_allocation`` make the
calls the kubelet makes when a pod is admitted and its containers are created. Given the CDI
spec's path, it records the file as it is when each registration arrives: what a container runtime
would resolve the CDI names of the next ``Allocate`` against.

Given a PodResources socket path, it also serves the PodResources API v1 ``List`` there
(``PodResourcesServer``), answering with the allocations it made, as the kubelet answers from its
device manager's record: each ``allocate`` admits one pod holding the devices it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import grpc
from gvirtus_kai_device_plugin.api import (
    API_VERSION,
    api_pb2,
    api_pb2_grpc,
    podresources_pb2,
    podresources_pb2_grpc,
)

WAIT_SECONDS = 10.0  # generous: a loaded 2-core CI machine must not make a test flaky


def pod_resources_socket(plugin_dir: Path) -> Path:
    """Where the kubelet serves PodResources, next to the plugin dir as in /var/lib/kubelet."""
    return plugin_dir.parent / "pod-resources" / "kubelet.sock"


def container_devices(
    namespace: str, pod: str, devices: dict[str, list[str]] | None = None, container: str = "main"
) -> podresources_pb2.PodResources:
    """A pod as List reports it: one container holding ``devices`` (resource name -> ids)."""
    return podresources_pb2.PodResources(
        name=pod,
        namespace=namespace,
        containers=[
            podresources_pb2.ContainerResources(
                name=container,
                devices=[
                    podresources_pb2.ContainerDevices(resource_name=name, device_ids=ids)
                    for name, ids in (devices or {}).items()
                ],
            )
        ],
    )


@dataclass
class PodResourcesServer:
    """The kubelet's PodResourcesLister on its own socket, answering ``List`` with ``pods``."""

    socket: Path
    pods: list[podresources_pb2.PodResources] = field(default_factory=list)
    # Answer List with this status instead, as a kubelet failing the call would.
    error: grpc.StatusCode | None = None
    # Answer List only after this many seconds (None: never, like a wedged kubelet).
    delay: float | None = 0.0
    # Called as each List arrives: lets a test look at the node at that moment.
    on_list: Callable[[], object] | None = None
    list_calls: int = 0
    _server: Any = None

    async def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self._server = grpc.aio.server()
        podresources_pb2_grpc.add_PodResourcesListerServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix://{self.socket}")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    async def List(  # gRPC method name
        self, request: podresources_pb2.ListPodResourcesRequest, context: Any
    ) -> podresources_pb2.ListPodResourcesResponse:
        self.list_calls += 1
        if self.on_list is not None:
            self.on_list()
        if self.delay is None:
            await asyncio.Event().wait()  # until the server stops and cancels the call
        await asyncio.sleep(self.delay or 0.0)
        if self.error is not None:
            await context.abort(self.error, "emulated kubelet fails List")
        return podresources_pb2.ListPodResourcesResponse(pod_resources=self.pods)


@dataclass
class Registration:
    request: api_pb2.RegisterRequest
    received_at: float  # time.monotonic()
    options: api_pb2.DevicePluginOptions | None = None  # what the plugin answered when dialled
    cdi_spec: bytes | None = None  # the spec file's content when Register arrived (None: missing)


@dataclass
class KubeletEmulator:
    plugin_dir: Path
    # The CDI spec file to read when a registration arrives.
    cdi_spec: Path | None = None
    # Answer this many Register calls with an error first, as a kubelet does for a bad request.
    refusals: int = 0
    # Accept Register calls but never answer them, like a wedged kubelet.
    unresponsive: bool = False
    # Serve PodResources on this socket too (None: this kubelet serves none).
    pod_resources_socket: Path | None = None
    pod_resources: PodResourcesServer | None = None
    registrations: list[Registration] = field(default_factory=list)
    # Register calls refused or left unanswered.
    refused: list[api_pb2.RegisterRequest] = field(default_factory=list)
    device_lists: list[list[tuple[str, str]]] = field(default_factory=list)
    stream_status: grpc.StatusCode | None = None
    socket_created_at: float = 0.0
    _server: Any = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def socket(self) -> Path:
        return self.plugin_dir / "kubelet.sock"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        api_pb2_grpc.add_RegistrationServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix://{self.socket}")
        await self._server.start()
        self.socket_created_at = time.monotonic()
        if self.pod_resources_socket is not None:
            if self.pod_resources is None:
                self.pod_resources = PodResourcesServer(self.pod_resources_socket)
            await self.pod_resources.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop like a kubelet going down: close the server and remove kubelet.sock."""
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        if self.pod_resources is not None:
            await self.pod_resources.stop()

    async def Register(  # gRPC method name
        self, request: api_pb2.RegisterRequest, context: Any
    ) -> api_pb2.Empty:
        if self.unresponsive:
            async with self._changed:
                self.refused.append(request)
                self._changed.notify_all()
            await asyncio.Event().wait()  # until the server stops and cancels the call
        if self.refusals > 0:
            self.refusals -= 1
            self.refused.append(request)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "emulated kubelet refuses for now")
        if request.version != API_VERSION:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"unsupported version {request.version!r}"
            )
        registration = Registration(request, time.monotonic(), cdi_spec=self._read_cdi_spec())
        async with self._changed:
            self.registrations.append(registration)
            self._changed.notify_all()
        task = asyncio.create_task(self._dial(registration))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return api_pb2.Empty()

    def _read_cdi_spec(self) -> bytes | None:
        if self.cdi_spec is None:
            return None
        try:
            return self.cdi_spec.read_bytes()
        except FileNotFoundError:
            return None

    def _channel(self, endpoint: str) -> Any:
        # Own subchannel pool: no connection state shared with the plugin's channels in-process.
        return grpc.aio.insecure_channel(
            f"unix://{self.plugin_dir / endpoint}",
            options=[("grpc.use_local_subchannel_pool", 1)],
        )

    async def _dial(self, registration: Registration) -> None:
        async with self._channel(registration.request.endpoint) as channel:
            stub = api_pb2_grpc.DevicePluginStub(channel)
            try:
                registration.options = await stub.GetDevicePluginOptions(
                    api_pb2.Empty(), timeout=WAIT_SECONDS
                )
                call = stub.ListAndWatch(api_pb2.Empty())
                async for response in call:
                    async with self._changed:
                        self.device_lists.append([(d.ID, d.health) for d in response.devices])
                        self._changed.notify_all()
                status = await call.code()
            except grpc.aio.AioRpcError as error:
                status = error.code()  # recorded for tests, as the kubelet logs it
            async with self._changed:
                self.stream_status = status
                self._changed.notify_all()

    async def wait_for(self, condition: Any, within: float = WAIT_SECONDS) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), within)

    async def wait_for_registrations(self, count: int = 1, within: float = WAIT_SECONDS) -> None:
        await self.wait_for(lambda: len(self.registrations) >= count, within)

    async def wait_for_device_lists(self, count: int = 1, within: float = WAIT_SECONDS) -> None:
        await self.wait_for(lambda: len(self.device_lists) >= count, within)

    async def allocate(self, *containers: list[str]) -> api_pb2.AllocateResponse:
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=c) for c in containers]
        )
        async with self._channel(self.registrations[-1].request.endpoint) as channel:
            response: api_pb2.AllocateResponse = await api_pb2_grpc.DevicePluginStub(
                channel
            ).Allocate(request, timeout=WAIT_SECONDS)
        if self.pod_resources is not None:
            # Admitted: the kubelet now records the pod as holding these devices.
            resource = self.registrations[-1].request.resource_name
            self.pod_resources.pods.append(
                podresources_pb2.PodResources(
                    name=f"pod-{len(self.pod_resources.pods)}",
                    namespace="default",
                    containers=[
                        podresources_pb2.ContainerResources(
                            name=f"container-{index}",
                            devices=[
                                podresources_pb2.ContainerDevices(
                                    resource_name=resource, device_ids=ids
                                )
                            ],
                        )
                        for index, ids in enumerate(containers)
                    ],
                )
            )
        return response

    async def preferred_allocation(
        self, available: list[str], must_include: list[str], size: int
    ) -> list[str]:
        request = api_pb2.PreferredAllocationRequest(
            container_requests=[
                api_pb2.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available,
                    must_include_deviceIDs=must_include,
                    allocation_size=size,
                )
            ]
        )
        async with self._channel(self.registrations[-1].request.endpoint) as channel:
            response: api_pb2.PreferredAllocationResponse = await api_pb2_grpc.DevicePluginStub(
                channel
            ).GetPreferredAllocation(request, timeout=WAIT_SECONDS)
            return list(response.container_responses[0].deviceIDs)

    async def pre_start_container(self, ids: list[str]) -> api_pb2.PreStartContainerResponse:
        async with self._channel(self.registrations[-1].request.endpoint) as channel:
            response: api_pb2.PreStartContainerResponse = await api_pb2_grpc.DevicePluginStub(
                channel
            ).PreStartContainer(
                api_pb2.PreStartContainerRequest(devices_ids=ids), timeout=WAIT_SECONDS
            )
            return response
