"""The DevicePlugin gRPC service the kubelet calls on our socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from gvirtus_kai_device_plugin import devices
from gvirtus_kai_device_plugin.api import HEALTHY, api_pb2

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registered = Gauge(
            "gvirtus_device_plugin_registered",
            "1 while the kubelet has accepted our registration, else 0",
            registry=registry,
        )
        self.registrations = Counter(
            "gvirtus_device_plugin_registrations",
            "Registrations the kubelet accepted",
            registry=registry,
        )
        self.registration_failures = Counter(
            "gvirtus_device_plugin_registration_failures",
            "Registration attempts that failed or that the kubelet refused",
            registry=registry,
        )
        self.allocations = Counter(
            "gvirtus_device_plugin_container_allocations",
            "Containers given virtual devices by Allocate",
            registry=registry,
        )
        self.devices = Gauge(
            "gvirtus_device_plugin_devices", "Virtual devices advertised", registry=registry
        )
        self.cdi_spec_repairs = Counter(
            "gvirtus_device_plugin_cdi_spec_repairs",
            "Times the CDI spec was written again because it went missing or was changed",
            registry=registry,
        )


class DeviceState:
    """The advertised devices. Nothing backs a virtual slot, so each is always healthy."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = frozenset(ids)

    def snapshot(self) -> api_pb2.ListAndWatchResponse:
        return api_pb2.ListAndWatchResponse(
            devices=[api_pb2.Device(ID=i, health=HEALTHY) for i in devices.sort_ids(self.ids)]
        )


class DevicePluginService:
    """Implements v1beta1.DevicePlugin; one instance per gRPC server (per registration).

    Method names are the RPC names: grpc dispatches to them by name.
    """

    def __init__(self, state: DeviceState, cdi_kind: str, metrics: Metrics) -> None:
        self._state = state
        self._cdi_kind = cdi_kind
        self._metrics = metrics
        self._closing = asyncio.Event()

    async def close(self) -> None:
        """End every ListAndWatch stream cleanly (status OK) before the server goes down."""
        self._closing.set()

    async def GetDevicePluginOptions(
        self, request: api_pb2.Empty, context: Any
    ) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    async def ListAndWatch(
        self, request: api_pb2.Empty, context: Any
    ) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        log.info("kubelet watching devices", extra={"devices": len(self._state.ids)})
        # The list never changes while we serve: send it once, keep the stream open until
        # closing, as the kubelet expects of a healthy plugin.
        yield self._state.snapshot()
        await self._closing.wait()

    async def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: Any
    ) -> api_pb2.PreferredAllocationResponse:
        try:
            return devices.preferred_allocation(request, self._state.ids)
        except devices.UnknownDeviceError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise  # abort raises; this keeps type checkers and readers sure we never fall through

    async def Allocate(
        self, request: api_pb2.AllocateRequest, context: Any
    ) -> api_pb2.AllocateResponse:
        try:
            response = devices.allocate(request, self._state.ids, self._cdi_kind)
        except devices.UnknownDeviceError as error:
            log.warning("allocate rejected", extra={"reason": str(error)})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
            raise
        self._metrics.allocations.inc(len(response.container_responses))
        log.info(
            "allocated",
            extra={
                "containers": [c.envs[devices.ENV_DEVICE_IDS] for c in response.container_responses]
            },
        )
        return response

    async def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: Any
    ) -> api_pb2.PreStartContainerResponse:
        # Nothing to prepare: virtual slots have no hardware to reset. Not requested in options.
        return api_pb2.PreStartContainerResponse()
