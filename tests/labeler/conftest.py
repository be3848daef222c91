"""Fixtures: the fake API server, a lightkube client pointing at it, and a running labeler."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest
from gvirtus_kai_common.backoff import Backoff
from gvirtus_kai_labeler.controller import Labeler
from gvirtus_kai_labeler.metrics import Metrics
from lightkube import AsyncClient, KubeConfig
from prometheus_client import CollectorRegistry

from tests.kubeapi.fixtures import kube_api, kubeconfig
from tests.labeler.support import DEFAULTS

__all__ = ["kube_api", "kubeconfig"]  # the shared fixtures, used by this suite

StartLabeler = Callable[..., Awaitable[Labeler]]


@pytest.fixture
async def client(kubeconfig: Path) -> AsyncIterator[AsyncClient]:
    api_client = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager="gvirtus-labeler")
    yield api_client
    await api_client.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def start_labeler(
    client: AsyncClient, registry: CollectorRegistry
) -> AsyncIterator[StartLabeler]:
    """Start ``Labeler.run()`` as a task (fast backoff for tests); cancelled after the test."""
    tasks: list[asyncio.Task[None]] = []

    async def start(
        node_name: str | None = "n1",
        wanted: Mapping[str, str] = DEFAULTS,
        watch_window: float = 300.0,
        list_chunk_size: int = 500,
    ) -> Labeler:
        labeler = Labeler(
            client,
            wanted,
            Metrics(registry),
            node_name=node_name,
            backoff=Backoff(initial=0.05, maximum=0.5),
            watch_window=watch_window,
            list_chunk_size=list_chunk_size,
        )
        tasks.append(asyncio.create_task(labeler.run()))
        return labeler

    yield start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
