"""Faults a real API server cannot produce on demand, injected by the proxy of tests/cluster in
front of it: dropped and expired watches, an outage, a server error on the assignment. The
controller talks to the proxy with its own ServiceAccount token; every other answer is real."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Pod

from tests.cluster.faultproxy import FaultProxy
from tests.controller.conftest import Running, Scene, StartController
from tests.controller.kube import (
    CONTROLLER_ACCOUNT,
    Ready,
    assigned,
    backend_slice,
    eventually,
    gated_pod,
    grant_contract_rbac,
    pod_gone,
    told,
)


@pytest.fixture
async def proxy(scene: Scene) -> AsyncIterator[FaultProxy]:
    plane = scene.cluster.plane
    async with FaultProxy(plane.server, plane.ca_file) as fault_proxy:
        yield fault_proxy


@pytest.fixture
async def behind_proxy(
    client: AsyncClient,
    scene: Scene,
    proxy: FaultProxy,
    start_controller: StartController,
    tmp_path: Path,
) -> Running:
    """A controller talking to the proxy, synced, with one ready backend."""
    await grant_contract_rbac(client, scene)
    token = scene.cluster.token(scene.release, CONTROLLER_ACCOUNT)
    kubeconfig = proxy.write_kubeconfig(tmp_path / "controller.kubeconfig", token)
    await client.create(backend_slice(scene, "s1", [Ready("10.4.0.1")]))
    running = await start_controller(as_user=kubeconfig)
    await client.create(gated_pod(scene, "first"))
    await assigned(client, scene, "first")
    await proxy.wait_until(lambda: proxy.open_watches == 2, within=20.0)
    return running


async def test_dropped_watches_resume_from_the_last_version_and_miss_nothing(
    client: AsyncClient, scene: Scene, proxy: FaultProxy, behind_proxy: Running
) -> None:
    watched_before = len([r for r in proxy.requests if r.is_watch])
    proxy.drop_watches()
    await client.create(gated_pod(scene, "after-drop"))

    assert await assigned(client, scene, "after-drop") == "10.4.0.1:9999"
    resumed = [r for r in proxy.requests if r.is_watch][watched_before:]
    assert resumed
    assert all(r.query.get("resourceVersion") for r in resumed)


async def test_an_expired_watch_lists_again_and_keeps_the_state(
    client: AsyncClient, scene: Scene, proxy: FaultProxy, behind_proxy: Running
) -> None:
    proxy.expire_watches()
    await client.create(gated_pod(scene, "after-expiry"))

    assert await assigned(client, scene, "after-expiry") == "10.4.0.1:9999"

    async def relisted() -> bool:
        return (
            behind_proxy.sample(
                "gvirtus_controller_watch_restarts_total", resource="pods", reason="expired"
            )
            >= 1
        )

    await eventually(relisted, "the pod watch restarted as expired")
    # The relist rebuilt the load from the annotations: both pods are counted once.
    assert behind_proxy.controller.placement.load("10.4.0.1:9999") == 2


async def test_an_api_outage_is_ridden_out(
    client: AsyncClient, scene: Scene, proxy: FaultProxy, behind_proxy: Running
) -> None:
    await proxy.stop()
    await client.create(backend_slice(scene, "s2", [Ready("10.4.0.2")]))
    await client.create(gated_pod(scene, "during-outage"))
    await client.create(gated_pod(scene, "during-outage-2"))

    await proxy.start()

    for name in ("during-outage", "during-outage-2"):
        await assigned(client, scene, name)

    async def both_backends_known() -> bool:
        return behind_proxy.sample("gvirtus_controller_backends_ready") == 2

    await eventually(both_backends_known, "the backend added during the outage")


async def test_a_server_error_on_the_assignment_is_retried(
    client: AsyncClient, scene: Scene, proxy: FaultProxy, behind_proxy: Running
) -> None:
    proxy.fail_next(1, 500, "PATCH")
    await client.create(gated_pod(scene, "unlucky"))

    (message,) = await told(client, scene, "unlucky", "WaitingForBackend")
    assert message.startswith("the API server refused the backend assignment (500)")
    assert await assigned(client, scene, "unlucky") == "10.4.0.1:9999"


async def test_a_forbidden_assignment_is_counted_and_names_the_permission_to_grant(
    client: AsyncClient,
    scene: Scene,
    proxy: FaultProxy,
    behind_proxy: Running,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The controller's own writes are accounted for as its watches are: by verb and code, and a
    # 403 tells the operator what to grant.
    proxy.fail_next(1, 403, "PATCH")
    with caplog.at_level(logging.ERROR, logger="gvirtus_kai_common.kube"):
        await client.create(gated_pod(scene, "refused"))
        assert await assigned(client, scene, "refused") == "10.4.0.1:9999"

    assert behind_proxy.sample("gvirtus_controller_api_errors_total", verb="patch", code="403") == 1
    hint = "forbidden: grant 'patch' on 'pods' to the controller's ServiceAccount"
    assert hint in [record.getMessage() for record in caplog.records]


async def test_a_new_pod_of_a_deleted_pods_name_starts_with_a_fresh_retry_backoff(
    client: AsyncClient,
    scene: Scene,
    proxy: FaultProxy,
    behind_proxy: Running,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every retry delay at its ceiling, so how far the backoff has grown shows in the timing.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    path = f"/api/v1/namespaces/{scene.apps}/pods/reused"

    def patches() -> int:
        return len(proxy.requests_to("PATCH", path))

    proxy.fail_next(3, 500, "PATCH", path)
    await client.create(gated_pod(scene, "reused"))
    await proxy.wait_until(lambda: patches() == 2, within=20.0)  # refused twice
    await client.delete(Pod, "reused", namespace=scene.apps)
    await eventually(lambda: pod_gone(client, scene, "reused"), "the first pod deleted")
    await client.create(gated_pod(scene, "reused"))
    await proxy.wait_until(lambda: patches() == 3, within=20.0)  # the new pod refused once

    waited = await proxy.wait_until(lambda: patches() == 4, within=20.0)

    # A first retry waits 1 + 2 s; the deleted pod's third would have waited 1 + 8 s.
    assert waited < 5.0
    assert await assigned(client, scene, "reused") == "10.4.0.1:9999"
