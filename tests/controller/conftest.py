"""Fixtures of the controller's loop tests: the session's real control plane (``tests/cluster``),
a client, each test's own namespaces, and controllers running in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gvirtus_kai_controller.controller import Controller
from gvirtus_kai_controller.leader import LeaderElector
from gvirtus_kai_controller.metrics import Metrics
from gvirtus_kai_controller.settings import Settings
from lightkube import AsyncClient, KubeConfig

from tests.cluster.kube import Cluster
from tests.cluster.release import ensure_namespace

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def kubeconfig(cluster: Cluster) -> Path:
    """The admin's kubeconfig: what tests use to set the scene, as an operator would."""
    return cluster.plane.admin_kubeconfig


@pytest.fixture
async def client(kubeconfig: Path) -> AsyncIterator[AsyncClient]:
    api = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager="tests")
    yield api
    await api.close()


class Scene:
    """One test's world: its own namespaces and enable label, so tests never see each other."""

    def __init__(self, client: AsyncClient, cluster: Cluster) -> None:
        number = next(_numbers)
        self.client = client
        self.cluster = cluster
        self.release = f"gvirtus-{number}"
        self.apps = f"apps-{number}"
        self.enable_label = f"test.gvirtus.io/scene-{number}"

    def create_namespaces(self) -> None:
        for name in (self.release, self.apps):
            ensure_namespace(self.cluster, name)

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "namespace": self.release,
            "backend_service": "gvirtus-backend-headless",
            "enable_label": self.enable_label,
            "plugins": "cudart,cublas",
            "health_port": 0,
            **overrides,
        }
        return Settings(**values)


@dataclass
class Running:
    """A controller running as a task of the test's event loop."""

    controller: Controller
    task: asyncio.Task[None]
    api: AsyncClient

    def sample(self, name: str, **labels: str) -> float:
        """A sample of the controller's metrics, as /metrics shows it (0 when absent)."""
        value = self.controller.metrics.registry.get_sample_value(name, labels)
        return value or 0.0

    async def crash(self) -> None:
        """Stop without any goodbye: the Lease is left to expire."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def halt(self) -> None:
        """Stop as on SIGTERM: cancel the loops, finish writes, release the Lease."""
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            await self.controller.stop()


StartController = Callable[..., Awaitable[Running]]


@pytest.fixture
async def scene(client: AsyncClient, cluster: Cluster) -> Scene:
    world = Scene(client, cluster)
    world.create_namespaces()
    return world


@pytest.fixture
async def start_controller(scene: Scene, kubeconfig: Path) -> AsyncIterator[StartController]:
    """Run controllers in this event loop, each with its own API client; halted after the test."""
    running: list[Running] = []

    async def start(
        *, identity: str = "controller-a", as_user: Path | None = None, **overrides: Any
    ) -> Running:
        """``as_user``: a kubeconfig to run with instead of the admin's."""
        settings = scene.settings(**overrides)
        config = KubeConfig.from_file(as_user or kubeconfig)
        api = AsyncClient(config, field_manager="gvirtus-controller")
        controller: Controller
        elector = None
        if settings.leader_election:
            elector = LeaderElector(
                api,
                namespace=settings.namespace,
                name=settings.lease_name,
                identity=identity,
                lease_duration=settings.lease_duration_seconds,
                on_change=lambda leading: controller.leadership_changed(leading),
            )
        controller = Controller(api, settings, Metrics(), elector=elector, eviction_retry=0.5)
        handle = Running(controller, asyncio.create_task(controller.run()), api)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        await handle.halt()
        await handle.api.close()
