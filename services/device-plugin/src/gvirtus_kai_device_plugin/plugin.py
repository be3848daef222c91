"""The plugin's life cycle: serve our socket, register with the kubelet, re-register on restart.

Watching the plugin directory is a 100 ms ``os.stat`` poll of two paths rather than inotify: it
needs no native binding, works on any file system a hostPath may be, cannot miss an event when
the directory itself is replaced, and its cost (20 stat calls a second) is negligible. It bounds
the delay between a new ``kubelet.sock`` and our registration to about 100 ms plus the RPCs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from gvirtus_kai_common.backoff import Backoff
from prometheus_client import CollectorRegistry

from gvirtus_kai_device_plugin import cdi, devices, files, podresources
from gvirtus_kai_device_plugin.api import API_VERSION, api_pb2, api_pb2_grpc
from gvirtus_kai_device_plugin.channels import describe, unix_channel
from gvirtus_kai_device_plugin.service import DevicePluginService, DeviceState, Metrics
from gvirtus_kai_device_plugin.settings import Settings

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
RPC_TIMEOUT_SECONDS = 5.0
STOP_GRACE_SECONDS = 0.2
# What a stop may take at most: our server's grace, the PodResources question, some slack.
STOP_SECONDS = STOP_GRACE_SECONDS + podresources.LIST_TIMEOUT_SECONDS + 1.0


class FileIdentity(NamedTuple):
    device: int
    inode: int
    changed_ns: int


def identity(path: Path) -> FileIdentity | None:
    """What tells one incarnation of a socket file from the next (a restarted kubelet makes a
    new file, usually with a new inode; ctime covers inode reuse)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return FileIdentity(status.st_dev, status.st_ino, status.st_ctime_ns)


class DevicePlugin:
    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        *,
        cdi_check_seconds: float = cdi.CHECK_SECONDS,
    ) -> None:
        self.settings = settings
        self.state = DeviceState(devices.device_ids(settings.device_count))
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.metrics.devices.set(settings.device_count)
        self.cdi_spec = cdi.CdiSpecFile(
            settings.cdi_spec_path,
            devices.cdi_spec(settings.cdi_kind, self.state.ids),
            self.metrics.cdi_spec_repairs,
        )
        self._cdi_check_seconds = cdi_check_seconds
        self.running = False
        # True while the kubelet holds our registration: what /readyz reports.
        self.registered = False
        self._server: Any = None  # grpc.aio.Server (grpc ships no type hints)
        self._service: DevicePluginService | None = None
        self._backoff = Backoff(initial=0.2, maximum=10.0)

    async def run(self) -> None:
        """Serve and stay registered until cancelled; then remove our socket, and the CDI spec
        unless a container on the node may still need it (see ``cdi``)."""
        self.running = True
        keeper = asyncio.create_task(self.cdi_spec.keep(self._cdi_check_seconds))
        try:
            while True:
                await self._serve_and_register_once()
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            self.running = False
            self._set_registered(False)
            await self._stop_server()
            await self._release_cdi_spec()

    async def _release_cdi_spec(self) -> None:
        """Remove the CDI spec if the kubelet says no container holds our devices; else keep it."""
        spec = str(self.settings.cdi_spec_path)
        try:
            holding = await podresources.list_holders(
                self.settings.pod_resources_socket, self.settings.resource_name
            )
        except podresources.PodResourcesUnavailable as error:
            log.warning(
                "stopped; socket removed, CDI spec kept: cannot ask the kubelet which containers "
                "hold our devices",
                extra={"cdi_spec": spec, "reason": str(error)},
            )
            return
        if holding:
            log.info(
                "stopped; socket removed, CDI spec kept: containers on the node hold our devices",
                extra={
                    "cdi_spec": spec,
                    "containers": len(holding),
                    # A few names say which pods to look at; a full list could be thousands.
                    "examples": [str(holder) for holder in holding[:5]],
                },
            )
            return
        try:
            self.cdi_spec.remove()
        except OSError as error:
            log.error(
                "stopped; socket removed, but the CDI spec could not be removed",
                extra={"cdi_spec": spec, "error": str(error)},
            )
            return
        log.info(
            "stopped; socket and CDI spec removed: no container on the node holds our devices",
            extra={"cdi_spec": spec},
        )

    async def _serve_and_register_once(self) -> None:
        """One incarnation: fresh server and socket, registration, watch until it must restart."""
        try:
            await self._start_server()
            await self._check_answers()
        except (OSError, RuntimeError, grpc.aio.AioRpcError) as error:
            log.error("could not serve our socket", extra={"error": describe(error)})
            await self._stop_server()
            await asyncio.sleep(self._backoff.next_delay())
            return
        registered_with = await self._register_until_accepted()
        if registered_with is not None:
            reason = await self._watch(registered_with)
            log.info("serving and registering again", extra={"reason": reason})
        self._set_registered(False)
        await self._stop_server()

    async def _start_server(self) -> None:
        socket_path = self.settings.socket_path
        files.remove_quietly(socket_path)  # a stale file from a previous run blocks the bind
        self._service = DevicePluginService(self.state, self.settings.cdi_kind, self.metrics)
        server = grpc.aio.server()
        api_pb2_grpc.add_DevicePluginServicer_to_server(self._service, server)
        server.add_insecure_port(f"unix://{socket_path}")
        self._server = server
        await server.start()
        log.info("serving", extra={"socket": str(socket_path)})

    async def _check_answers(self) -> None:
        """Dial our own socket as the kubelet will; registering a dead endpoint helps no one."""
        async with unix_channel(self.settings.socket_path) as channel:
            stub = api_pb2_grpc.DevicePluginStub(channel)
            await stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=RPC_TIMEOUT_SECONDS)

    async def _stop_server(self) -> None:
        # The fields are cleared only once stopped: if this is cancelled half-way, the final
        # clean-up in run() stops the same server again (stopping twice is harmless).
        if self._service is not None:
            await self._service.close()
            self._service = None
        if self._server is not None:
            await self._server.stop(STOP_GRACE_SECONDS)
            self._server = None
        files.remove_quietly(self.settings.socket_path)

    def _register_request(self) -> api_pb2.RegisterRequest:
        return api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=self.settings.socket_name,
            resource_name=self.settings.resource_name,
            options=api_pb2.DevicePluginOptions(
                pre_start_required=False, get_preferred_allocation_available=True
            ),
        )

    async def _register_until_accepted(self) -> FileIdentity | None:
        """Register, retrying with backoff; returns the kubelet socket we registered with, or
        None when our own socket vanished (the caller then restarts)."""
        kubelet_socket = self.settings.kubelet_socket
        while True:
            if not self.settings.socket_path.exists():
                return None
            attempted_with = identity(kubelet_socket)
            try:
                # Before the kubelet may allocate: the runtime resolves Allocate's CDI names in it.
                self.cdi_spec.ensure()
                async with unix_channel(kubelet_socket) as channel:
                    stub = api_pb2_grpc.RegistrationStub(channel)
                    await stub.Register(self._register_request(), timeout=RPC_TIMEOUT_SECONDS)
            except (OSError, grpc.aio.AioRpcError) as error:
                self.metrics.registration_failures.inc()
                delay = self._backoff.next_delay()
                log.warning(
                    "kubelet registration failed; retrying",
                    extra={
                        "error": describe(error),
                        "retry_in_seconds": round(delay, 3),
                        "attempt": self._backoff.attempts,
                    },
                )
                await self._wait_for_retry(delay, attempted_with)
                continue
            self._backoff.reset()
            self.metrics.registrations.inc()
            self._set_registered(True)
            log.info(
                "registered with the kubelet",
                extra={
                    "resource": self.settings.resource_name,
                    "endpoint": self.settings.socket_name,
                    "devices": self.settings.device_count,
                },
            )
            return attempted_with

    async def _wait_for_retry(self, delay: float, attempted_with: FileIdentity | None) -> None:
        """Sleep ``delay``, cut short by a new kubelet socket (a kubelet that just started is
        worth trying at once: that is what keeps re-registration under a second)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while loop.time() < deadline:
            current = identity(self.settings.kubelet_socket)
            if current is not None and current != attempted_with:
                return
            await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - loop.time())))

    def _set_registered(self, registered: bool) -> None:
        self.registered = registered
        self.metrics.registered.set(1 if registered else 0)

    async def _watch(self, registered_with: FileIdentity | None) -> str:
        """Wait until something forces a new registration; returns why."""
        kubelet_gone = False
        while True:
            await asyncio.sleep(POLL_SECONDS)
            if not self.settings.socket_path.exists():
                return "our socket was removed"
            current = identity(self.settings.kubelet_socket)
            if current is None:
                if not kubelet_gone:
                    # The kubelet that held our registration is gone: not ready until the next
                    # one accepts us (its new socket, whatever its inode, ends this watch).
                    log.info("kubelet.sock disappeared; waiting for the kubelet to come back")
                    self._set_registered(False)
                    kubelet_gone = True
            elif kubelet_gone or current != registered_with:
                return "kubelet.sock was re-created (kubelet restart)"
