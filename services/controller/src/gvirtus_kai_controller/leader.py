"""Leader election with a coordination.k8s.io Lease, the way Kubernetes' own controllers do it.

A candidate takes the Lease when it is free or when its holder has not renewed it for the
lease duration, measured on this process's clock from when the holder's record last changed
(so clocks of different nodes need not agree). The leader renews every ``retry`` seconds and
stops leading if it could not renew for ``renew_deadline``, well before others may take over.
Writes are replaces guarded by resourceVersion: of two candidates, one wins.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable

from gvirtus_kai_common.kube import ApiErrors, ApiFailure, api_call
from lightkube import AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        on_change: Callable[[bool], None] = lambda leading: None,
        api_errors: ApiErrors | None = None,
    ) -> None:
        self._client = client
        self._api_errors = api_errors or ApiErrors(None, "controller")
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._duration = lease_duration
        # client-go's defaults keep these ratios: 15 s lease, 10 s renew deadline, 2 s retry.
        self._renew_deadline = lease_duration * 2 / 3
        self._retry = lease_duration / 7.5
        self._on_change = on_change
        self._leading = False
        self._renewed_at = 0.0
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0

    @property
    def leading(self) -> bool:
        return self._leading

    async def run(self) -> None:
        """Try to acquire or renew every ``retry`` seconds until cancelled."""
        while True:
            now = time.monotonic()
            try:
                held = await self._acquire_or_renew(now)
            except ApiFailure as failure:
                self._api_errors.record(failure, "leases", "lease request failed", lease=self._name)
                held = False
            if held:
                self._renewed_at = now
                self._set_leading(True)
            elif self._leading and time.monotonic() - self._renewed_at > self._renew_deadline:
                self._set_leading(False)
            await asyncio.sleep(self._retry)

    async def release(self) -> None:
        """Give the Lease up on a clean stop, so a standby takes over at once."""
        if not self._leading:
            return
        self._set_leading(False)
        try:
            with api_call("get"):
                lease = await self._client.get(Lease, self._name, namespace=self._namespace)
            if lease.spec is None or lease.spec.holderIdentity != self.identity:
                return
            lease.spec.holderIdentity = None
            lease.spec.leaseDurationSeconds = 1
            lease.spec.renewTime = _now()
            with api_call("update"):
                await self._client.replace(lease)
            log.info("lease released", extra={"lease": self._name})
        except ApiFailure as failure:
            self._api_errors.record(
                failure, "leases", "could not release the lease", lease=self._name
            )

    def _set_leading(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info(
                "leading" if leading else "not leading any more",
                extra={"lease": self._name, "identity": self.identity},
            )
            self._on_change(leading)

    async def _acquire_or_renew(self, now: float) -> bool:
        try:
            with api_call("get"):
                lease = await self._client.get(Lease, self._name, namespace=self._namespace)
        except ApiFailure as failure:
            if failure.code != 404:
                raise
            return await self._create()
        spec = lease.spec or LeaseSpec()
        holder = spec.holderIdentity
        if holder and holder != self.identity:
            record = (holder, spec.renewTime, spec.acquireTime, spec.leaseDurationSeconds)
            if record != self._observed:
                self._observed, self._observed_at = record, now
            duration = spec.leaseDurationSeconds or self._duration
            if now - self._observed_at < duration:
                return False
            log.info("lease expired; taking it over", extra={"previous_holder": holder})
        stamp = _now()
        if holder != self.identity:
            spec.acquireTime = stamp
            spec.leaseTransitions = (spec.leaseTransitions or 0) + (1 if holder else 0)
        spec.holderIdentity = self.identity
        spec.leaseDurationSeconds = max(1, round(self._duration))
        spec.renewTime = stamp
        lease.spec = spec
        try:
            with api_call("update"):
                await self._client.replace(lease)
        except ApiFailure as failure:
            if failure.code == 409:  # another candidate wrote first
                return False
            raise
        return True

    async def _create(self) -> bool:
        stamp = _now()
        lease = Lease(
            metadata=ObjectMeta(name=self._name, namespace=self._namespace),
            spec=LeaseSpec(
                holderIdentity=self.identity,
                leaseDurationSeconds=max(1, round(self._duration)),
                acquireTime=stamp,
                renewTime=stamp,
                leaseTransitions=0,
            ),
        )
        try:
            with api_call("create"):
                await self._client.create(lease)
        except ApiFailure as failure:
            if failure.code == 409:  # another candidate created it first
                return False
            raise
        return True


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
