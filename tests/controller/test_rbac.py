"""The controller needs no more than the RBAC the chart grants it: run with a ServiceAccount bound
to exactly that, it assigns, reports, elects and evicts."""

from __future__ import annotations

import pytest
from lightkube import AsyncClient
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.resources.rbac_authorization_v1 import RoleBinding

from tests.controller.conftest import Scene, StartController
from tests.controller.kube import (
    CONTROLLER_ACCOUNT,
    Ready,
    assigned,
    backend_slice,
    eventually,
    gated_pod,
    grant_contract_rbac,
    owner_reference,
    pod_gone,
    told,
)


async def test_the_contracts_rbac_is_enough_to_assign_elect_report_and_evict(
    client: AsyncClient, scene: Scene, start_controller: StartController
) -> None:
    await grant_contract_rbac(client, scene)
    identity = scene.cluster.token_for(scene.release, CONTROLLER_ACCOUNT)
    reference = await owner_reference(client, scene)
    await client.create(backend_slice(scene, "s1", [Ready("10.3.0.1")]))
    running = await start_controller(
        as_user=identity,
        leader_election=True,
        lease_duration_seconds=2.0,
        on_backend_loss="evict",
        backend_loss_grace_seconds=0,
    )
    await client.create(gated_pod(scene, "p", owner=reference))

    assert await assigned(client, scene, "p") == "10.3.0.1:9999"
    assert await told(client, scene, "p", "BackendAssigned")
    await client.delete(EndpointSlice, "s1", namespace=scene.release)

    await eventually(lambda: pod_gone(client, scene, "p"), "the pod evicted")
    assert running.sample("gvirtus_controller_api_errors_total", verb="watch", code="403") == 0


async def test_a_missing_permission_is_named_and_the_controller_stays_unready(
    client: AsyncClient,
    scene: Scene,
    start_controller: StartController,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await grant_contract_rbac(client, scene)
    await client.delete(RoleBinding, CONTROLLER_ACCOUNT, namespace=scene.release)
    identity = scene.cluster.token_for(scene.release, CONTROLLER_ACCOUNT)

    running = await start_controller(as_user=identity)

    async def named() -> bool:
        return any(
            "grant 'list' on 'endpointslices' to the controller's ServiceAccount"
            in record.getMessage()
            for record in caplog.records
        )

    await eventually(named, "the missing permission in the log")
    assert not running.controller.ready()
