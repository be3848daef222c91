"""The controller's placeholder pods on the real API server: a restarted controller keeps the
ones it finds instead of adding more, and writes the API server refuses are retried with a
growing pause, not every pass."""

from __future__ import annotations

import asyncio
import random

import pytest
from lightkube import AsyncClient
from lightkube.models.core_v1 import ResourceQuotaSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod, ResourceQuota

from tests.controller.conftest import Scene, StartController
from tests.controller.kube import eventually, gated_pod

OWNER = "gvirtus-controller"
PLACEHOLDER_LABEL = "gvirtus.io/placeholder-for"


async def create_owner(client: AsyncClient, scene: Scene) -> None:
    """The Deployment the placeholders belong to (no replicas: nothing of it runs here)."""
    labels = {"app.kubernetes.io/name": "gvirtus-kai", "app.kubernetes.io/component": "controller"}
    deployment = Deployment.from_dict(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": OWNER, "namespace": scene.release, "labels": labels},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "registry.test/c:1"}]},
                },
            },
        }
    )
    assert isinstance(deployment, Deployment)
    await client.create(deployment)


def demand_settings() -> dict[str, object]:
    return {
        "demand_enabled": True,
        "demand_wait_seconds": 0,
        "demand_max_placeholders": 2,
        "demand_owner": OWNER,
        "demand_image": "localhost/pause:dev",
        "max_pods_per_backend": 1,
    }


async def placeholder_names(client: AsyncClient, scene: Scene) -> set[str]:
    return {
        str(pod.metadata.name)
        async for pod in client.list(
            Pod, namespace=scene.release, labels={PLACEHOLDER_LABEL: OWNER}
        )
        if pod.metadata is not None and pod.metadata.deletionTimestamp is None
    }


async def test_a_restarted_controller_keeps_the_placeholders_it_finds(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await create_owner(client, scene)
    for i in range(3):  # no backend at all; one pod per backend: three missing, two allowed
        await client.create(gated_pod(scene, f"p{i}"))
    first = await start_controller(**demand_settings())

    async def two() -> set[str] | None:
        names = await placeholder_names(client, scene)
        return names if len(names) == 2 else None

    names = await eventually(two, "two placeholders")
    assert names == {f"{OWNER}-demand-0", f"{OWNER}-demand-1"}
    await first.halt()
    second = await start_controller(identity="controller-b", **demand_settings())

    async def counted() -> bool:
        return second.sample("gvirtus_controller_placeholders") == 2

    await eventually(counted, "the new controller to count the placeholders it found")
    for _ in range(10):
        assert await placeholder_names(client, scene) == names
        await asyncio.sleep(0.2)
    assert second.sample("gvirtus_controller_api_errors_total", verb="create", code="409") == 0


async def test_refused_placeholder_creates_are_retried_with_a_growing_pause(
    client: AsyncClient,
    scene: Scene,
    start_controller: StartController,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every pause at its ceiling (no jitter), so the count of attempts shows the backoff.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    await create_owner(client, scene)
    quota = ResourceQuota(
        metadata=ObjectMeta(name="no-pods", namespace=scene.release),
        spec=ResourceQuotaSpec(hard={"pods": "0"}),
    )
    await client.create(quota)

    async def enforced() -> bool:  # the quota controller has counted the namespace
        fresh = await client.get(ResourceQuota, "no-pods", namespace=scene.release)
        return fresh.status is not None and fresh.status.hard is not None

    await eventually(enforced, "the quota to be enforced")
    await client.create(gated_pod(scene, "p"))
    running = await start_controller(**demand_settings())

    def refused() -> float:
        return running.sample("gvirtus_controller_api_errors_total", verb="create", code="403")

    async def first_refusal() -> bool:
        return refused() >= 1

    await eventually(first_refusal, "a refused placeholder")
    await asyncio.sleep(6)
    # Pauses of 1, 2, then 4 s: two more attempts in 6 s; without them, one every pass (~1 s).
    assert refused() <= 3
    assert await placeholder_names(client, scene) == set()
