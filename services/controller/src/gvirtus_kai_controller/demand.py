"""Placeholder pods: demand for backends made visible to a cluster autoscaler.

Gated pods are not unschedulable, so no autoscaler adds a GPU node for them. A placeholder is:
a ``pause`` container requesting one physical GPU, the backend nodes' nodeSelector and
tolerations, and a low priority class that never preempts. The scheduler reports it
Unschedulable until a node exists that could host a backend; an autoscaler adds one for it, the
backend DaemonSet's pod lands there (preempting the placeholder if it must). Placeholders are
owned by the controller's Deployment, so uninstalling the chart removes them.

Names are ``<owner>-demand-<n>``: two writers (a restarted leader, a retry) make the same pods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

from gvirtus_kai_common.backoff import Backoff
from gvirtus_kai_common.kube import ApiErrors, ApiFailure, ListWatch, api_call
from lightkube import AsyncClient
from lightkube.models.core_v1 import (
    Capabilities,
    Container,
    PodSecurityContext,
    PodSpec,
    ResourceRequirements,
    SeccompProfile,
    SecurityContext,
    Toleration,
)
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod

from gvirtus_kai_controller.metrics import Metrics
from gvirtus_kai_controller.settings import Settings

log = logging.getLogger(__name__)

PLACEHOLDER_LABEL = "gvirtus.io/placeholder-for"  # value: the owning Deployment's name
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "demand"  # not the controller's: its ReplicaSet must not adopt placeholders
PAUSE_USER = 65535  # the pause image's nobody


@dataclass(frozen=True)
class Owner:
    name: str
    uid: str
    labels: dict[str, str]


def placeholder_pod(settings: Settings, owner: Owner, name: str) -> Pod:
    """One placeholder as created: what a backend pod needs of a node, and nothing that runs."""
    labels = {**owner.labels, COMPONENT_LABEL: COMPONENT, PLACEHOLDER_LABEL: owner.name}
    gpu = {settings.demand_gpu_resource: "1"}
    return Pod(
        metadata=ObjectMeta(
            name=name,
            namespace=settings.namespace,
            labels=labels,
            ownerReferences=[
                OwnerReference(
                    apiVersion="apps/v1", kind="Deployment", name=owner.name, uid=owner.uid
                )
            ],
        ),
        spec=PodSpec(
            containers=[
                Container(
                    name="pause",
                    image=settings.demand_image,
                    resources=ResourceRequirements(
                        requests={**settings.demand_requests, **gpu}, limits=gpu
                    ),
                    securityContext=SecurityContext(
                        allowPrivilegeEscalation=False,
                        readOnlyRootFilesystem=True,
                        capabilities=Capabilities(drop=["ALL"]),
                    ),
                )
            ],
            priorityClassName=settings.demand_priority_class or None,
            nodeSelector=dict(settings.demand_node_selector) or None,
            tolerations=[_toleration(t) for t in settings.demand_tolerations] or None,
            automountServiceAccountToken=False,
            enableServiceLinks=False,
            terminationGracePeriodSeconds=0,
            securityContext=PodSecurityContext(
                runAsNonRoot=True,
                runAsUser=PAUSE_USER,
                runAsGroup=PAUSE_USER,
                seccompProfile=SeccompProfile(type="RuntimeDefault"),
            ),
        ),
    )


def _toleration(fields: Mapping[str, Any]) -> Toleration:
    known = {"key", "operator", "value", "effect", "tolerationSeconds"}
    return Toleration(**{k: v for k, v in fields.items() if k in known})


def _number(name: str, owner: str) -> int:
    suffix = name.removeprefix(f"{owner}-demand-")
    return int(suffix) if suffix.isdigit() else -1


class Placeholders:
    """Keeps as many placeholder pods as ``reconcile`` is told, in the release namespace."""

    def __init__(
        self, client: AsyncClient, settings: Settings, metrics: Metrics, api_errors: ApiErrors
    ) -> None:
        self._client = client
        self._settings = settings
        self._metrics = metrics
        self._api_errors = api_errors
        self._owner: Owner | None = None
        self._live: set[str] = set()  # placeholders seen and not terminating
        self._taken: set[str] = set()  # names in use: live, terminating, or being written
        self._writing: set[str] = set()
        self._listed = False
        # A refused write (403, a quota, an admission webhook) is retried after a growing pause.
        self._backoff = Backoff(initial=1.0, maximum=60.0)
        self._retry_at = 0.0

    @property
    def count(self) -> int:
        return len(self._live)

    async def run(self) -> None:
        """Find the owning Deployment, then follow the placeholders until cancelled."""
        backoff = Backoff(initial=1.0, maximum=30.0)
        owner_name = self._settings.demand_owner
        while self._owner is None:
            try:
                with api_call("get"):
                    deployment = await self._client.get(
                        Deployment, owner_name, namespace=self._settings.namespace
                    )
            except ApiFailure as failure:
                self._api_errors.record(
                    failure, "deployments", "cannot read the placeholders' owner", name=owner_name
                )
                await asyncio.sleep(backoff.next_delay())
                continue
            metadata = deployment.metadata
            assert metadata is not None  # the API server always sets both
            assert metadata.uid
            self._owner = Owner(owner_name, metadata.uid, dict(metadata.labels or {}))
        await ListWatch(
            self._client,
            Pod,
            listed=self._pods_listed,
            changed=self._pod_event,
            api_errors=self._metrics.api_errors,
            watch_restarts=self._metrics.watch_restarts,
            account="controller",
            namespace=self._settings.namespace,
            labels={PLACEHOLDER_LABEL: owner_name},
        ).run()

    async def _pods_listed(self, pods: list[Pod]) -> None:
        self._live.clear()
        self._taken = set(self._writing)
        for pod in pods:
            self._seen(pod)
        self._listed = True

    async def _pod_event(self, event_type: str, pod: Pod) -> None:
        name = pod.metadata.name if pod.metadata else None
        if not name:
            return
        if event_type == "DELETED":
            self._live.discard(name)
            if name not in self._writing:
                self._taken.discard(name)
            return
        self._seen(pod)

    def _seen(self, pod: Pod) -> None:
        metadata = pod.metadata
        if metadata is None or not metadata.name:
            return
        self._taken.add(metadata.name)
        if metadata.deletionTimestamp is None:
            self._live.add(metadata.name)
        else:
            self._live.discard(metadata.name)

    def reconcile(self, wanted: int) -> list[Awaitable[None]]:
        """The writes that bring the placeholders to ``wanted``; none before they are listed."""
        owner = self._owner
        if owner is None or not self._listed or time.monotonic() < self._retry_at:
            return []
        live = sorted(self._live - self._writing, key=lambda n: _number(n, owner.name))
        creating = sum(1 for name in self._writing if name not in self._live)
        writes: list[Awaitable[None]] = []
        missing = wanted - len(live) - creating
        number = 0
        while missing > 0:
            name = f"{owner.name}-demand-{number}"
            number += 1
            if name in self._taken:
                continue
            self._claim(name)
            writes.append(self._create(owner, name))
            missing -= 1
        for name in live[max(wanted, 0) :]:
            self._claim(name)
            writes.append(self._delete(name))
        return writes

    def _claim(self, name: str) -> None:
        self._writing.add(name)
        self._taken.add(name)

    async def _create(self, owner: Owner, name: str) -> None:
        try:
            with api_call("create"):
                await self._client.create(placeholder_pod(self._settings, owner, name))
            self._live.add(name)
            self._backoff.reset()
            log.info("placeholder created", extra={"pod": name})
        except ApiFailure as failure:
            if failure.code != 409:  # 409: made already, or still terminating; the watch tells
                self._taken.discard(name)
                self._refused()
            self._api_errors.record(failure, "pods", "could not create a placeholder", pod=name)
        finally:
            self._writing.discard(name)

    async def _delete(self, name: str) -> None:
        try:
            with api_call("delete"):
                await self._client.delete(Pod, name, namespace=self._settings.namespace)
            self._live.discard(name)
            log.info("placeholder deleted", extra={"pod": name})
        except ApiFailure as failure:
            if failure.code == 404:
                self._live.discard(name)
                self._taken.discard(name)
            else:
                self._refused()
                self._api_errors.record(failure, "pods", "could not delete a placeholder", pod=name)
        finally:
            self._writing.discard(name)

    def _refused(self) -> None:
        self._retry_at = time.monotonic() + self._backoff.next_delay()
