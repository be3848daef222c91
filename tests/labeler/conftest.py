"""Fixtures: the session's real API server behind a fault-injecting proxy, the labeler's own
ServiceAccount identity, each test's nodes, and a running labeler.

The labeler talks to the proxy (``tests/cluster/faultproxy.py``) with its ServiceAccount token;
every answer is the real server's unless a test injects a fault. Tests write nodes as an operator
would, straight to the API server with the admin identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from gvirtus_kai_common.backoff import Backoff
from gvirtus_kai_labeler.controller import Labeler
from gvirtus_kai_labeler.metrics import Metrics
from lightkube import AsyncClient, KubeConfig
from lightkube.models.authorization_v1 import ResourceAttributes, SelfSubjectAccessReviewSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.authorization_v1 import SelfSubjectAccessReview
from lightkube.resources.core_v1 import ServiceAccount
from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding
from prometheus_client import CollectorRegistry

from tests.cluster.faultproxy import FaultProxy
from tests.cluster.kube import Cluster, wait_until
from tests.cluster.release import ensure_namespace
from tests.labeler.support import DEFAULTS, Nodes

NAMESPACE = "labeler-tests"
# What the chart's ClusterRole grants the labeler (tests/cluster/test_service_accounts.py checks
# the chart's own objects).
NODE_VERBS = ["get", "list", "watch", "patch"]

StartLabeler = Callable[..., Awaitable[Labeler]]


@dataclass
class Identity:
    """A ServiceAccount bound to a ClusterRole on nodes; ``token`` authenticates as it."""

    cluster: Cluster
    name: str
    token: str = ""

    def create(self, verbs: list[str]) -> Identity:
        client = self.cluster.client
        ensure_namespace(self.cluster, NAMESPACE)
        client.create(ServiceAccount(metadata=ObjectMeta(name=self.name)), namespace=NAMESPACE)
        self.set_verbs(verbs)
        client.create(
            ClusterRoleBinding(
                metadata=ObjectMeta(name=self.name),
                roleRef=RoleRef(
                    apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name=self.name
                ),
                subjects=[Subject(kind="ServiceAccount", name=self.name, namespace=NAMESPACE)],
            )
        )
        self.token = self.cluster.token(NAMESPACE, self.name)
        self.wait_for_verbs(verbs)
        return self

    def set_verbs(self, verbs: list[str]) -> None:
        role = ClusterRole(
            metadata=ObjectMeta(name=self.name),
            rules=[PolicyRule(apiGroups=[""], resources=["nodes"], verbs=verbs)],
        )
        self.cluster.client.apply(role, force=True)

    def wait_for_verbs(self, verbs: list[str]) -> None:
        """Until the API server's authorizer sees exactly ``verbs`` (RBAC changes reach it
        through an informer, a moment after the write)."""
        client = self.cluster.client_for(
            self.cluster.plane.kubeconfig_for_token(self.token, self.name)
        )

        def allowed(verb: str) -> bool:
            spec = SelfSubjectAccessReviewSpec(
                resourceAttributes=ResourceAttributes(verb=verb, resource="nodes")
            )
            review = client.create(SelfSubjectAccessReview(spec=spec))
            return review.status is not None and review.status.allowed

        wait_until(
            lambda: all(allowed(verb) == (verb in verbs) for verb in NODE_VERBS),
            f"RBAC to grant {self.name} exactly {verbs} on nodes",
        )

    def delete(self) -> None:
        client = self.cluster.client
        client.delete(ClusterRoleBinding, self.name)
        client.delete(ClusterRole, self.name)
        client.delete(ServiceAccount, self.name, namespace=NAMESPACE)


@pytest.fixture(scope="session")
def labeler_identity(cluster: Cluster) -> Iterator[Identity]:
    identity = Identity(cluster, "labeler").create(NODE_VERBS)
    yield identity
    identity.delete()


_restricted = itertools.count(1)


@pytest.fixture
def restricted_identity(cluster: Cluster) -> Iterator[Identity]:
    """A labeler identity that may read nodes but not patch them (until a test grants it)."""
    identity = Identity(cluster, f"labeler-restricted-{next(_restricted)}")
    identity.create(["get", "list", "watch"])
    yield identity
    identity.delete()


@pytest.fixture
def identity(request: pytest.FixtureRequest, labeler_identity: Identity) -> Identity:
    """The identity of the labeler under test: the chart's permissions, or the restricted one
    when the test asks for ``restricted_identity``."""
    if "restricted_identity" in request.fixturenames:
        restricted: Identity = request.getfixturevalue("restricted_identity")
        return restricted
    return labeler_identity


@pytest.fixture
async def kube_api(cluster: Cluster) -> AsyncIterator[FaultProxy]:
    """The fault-injecting proxy in front of the real API server, for this test only."""
    async with FaultProxy(cluster.plane.server, cluster.plane.ca_file) as proxy:
        yield proxy


@pytest.fixture
def kubeconfig(kube_api: FaultProxy, identity: Identity, tmp_path: Path) -> Path:
    """The labeler's kubeconfig: its own token, through the proxy."""
    return kube_api.write_kubeconfig(tmp_path / "kubeconfig", identity.token)


@pytest.fixture
async def admin(cluster: Cluster) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(KubeConfig.from_file(cluster.kubeconfig), field_manager="operator")
    yield client
    await client.close()


@pytest.fixture
async def nodes(admin: AsyncClient) -> AsyncIterator[Nodes]:
    made = Nodes(admin)
    yield made
    await made.delete_all()


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
    client: AsyncClient, registry: CollectorRegistry, nodes: Nodes
) -> AsyncIterator[StartLabeler]:
    """Start ``Labeler.run()`` as a task (fast backoff for tests); cancelled after the test.
    ``node`` is a short node name of the test (``nodes.name``), None for every node."""
    tasks: list[asyncio.Task[None]] = []

    async def start(
        node: str | None = "n1",
        wanted: Mapping[str, str] = DEFAULTS,
        watch_window: float = 300.0,
        list_chunk_size: int = 500,
    ) -> Labeler:
        labeler = Labeler(
            client,
            wanted,
            Metrics(registry),
            node_name=nodes.name(node) if node else None,
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
