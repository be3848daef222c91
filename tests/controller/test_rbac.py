"""The controller needs no more than the RBAC the chart grants it (the contract in the design):
run with a ServiceAccount bound to exactly that, it assigns, reports, elects and evicts."""

from __future__ import annotations

from pathlib import Path

from lightkube import AsyncClient
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.core_v1 import ServiceAccount
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.resources.rbac_authorization_v1 import (
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
)

from tests.controller.apiserver import token_kubeconfig
from tests.controller.conftest import Scene, StartController
from tests.controller.kube import (
    Ready,
    assigned,
    backend_slice,
    eventually,
    gated_pod,
    owner_reference,
    pod_gone,
    told,
)

ACCOUNT = "gvirtus-controller"


async def controller_identity(client: AsyncClient, scene: Scene, tmp_path: Path) -> Path:
    """The ServiceAccount with the contract's ClusterRole and Role; a kubeconfig for it."""
    name = f"{scene.release}.controller"
    await client.create(ServiceAccount(metadata=ObjectMeta(name=ACCOUNT, namespace=scene.release)))
    subject = [Subject(kind="ServiceAccount", name=ACCOUNT, namespace=scene.release)]
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
            metadata=ObjectMeta(name=ACCOUNT, namespace=scene.release),
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
            metadata=ObjectMeta(name=ACCOUNT, namespace=scene.release),
            roleRef=RoleRef(apiGroup="rbac.authorization.k8s.io", kind="Role", name=ACCOUNT),
            subjects=subject,
        )
    )
    token = await client.create(
        ServiceAccount.Token(
            metadata=ObjectMeta(), spec=TokenRequestSpec(audiences=[], expirationSeconds=3600)
        ),
        name=ACCOUNT,
        namespace=scene.release,
    )
    assert token.status is not None
    assert token.status.token
    return token_kubeconfig(
        scene.kubeconfig, token.status.token, tmp_path / "controller.kubeconfig"
    )


async def test_the_contracts_rbac_is_enough_to_assign_elect_report_and_evict(
    client: AsyncClient, scene: Scene, start_controller: StartController, tmp_path: Path
) -> None:
    identity = await controller_identity(client, scene, tmp_path)
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
