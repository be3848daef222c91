"""Events on pods, as ``kubectl describe pod`` shows them.

Each Event is named after the pod and a digest of (pod uid, reason, detail), so the same news
about the same pod is one object: told again (a flapping reason, a restarted or new leader),
the Event is not duplicated; its count and last timestamp are bumped instead.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from collections import OrderedDict
from typing import Literal

from gvirtus_kai_common.kube import ApiErrors, ApiFailure, api_call
from lightkube import AsyncClient
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event
from lightkube.types import PatchType

from gvirtus_kai_controller.placement import PodInfo

log = logging.getLogger(__name__)

COMPONENT = "gvirtus-controller"
EventType = Literal["Normal", "Warning"]
# Names of Events this process wrote and their counts; bounded, older entries are forgotten
# (a forgotten Event only loses its exact count when told again).
REMEMBERED_EVENTS = 20_000
MAX_MESSAGE = 1024
# Events written at once: a burst (5,000 pods told they wait) must not crowd out assignments.
PARALLEL_EVENT_WRITES = 4


def event_name(pod: PodInfo, reason: str, detail: str) -> str:
    digest = hashlib.sha256(f"{pod.uid}\n{reason}\n{detail}".encode()).hexdigest()[:16]
    # Pod names are DNS subdomains of up to 253 characters; so must the Event's be.
    prefix = pod.name if len(pod.name) <= 253 - 17 else "gvirtus"
    return f"{prefix}.{digest}"


class EventRecorder:
    def __init__(self, client: AsyncClient, api_errors: ApiErrors | None = None) -> None:
        self._client = client
        self._api_errors = api_errors or ApiErrors(None, "controller")
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._writes = asyncio.Semaphore(PARALLEL_EVENT_WRITES)

    async def record(
        self,
        pod: PodInfo,
        reason: str,
        message: str,
        event_type: EventType = "Normal",
        *,
        detail: str = "",
    ) -> None:
        """Tell ``pod`` ``message``; ``detail`` tells news with the same reason apart (the same
        message for another backend is other news). Failures are logged, never raised: an
        Event is a courtesy, and placement must go on without it."""
        name = event_name(pod, reason, detail or message)
        now = datetime.datetime.now(datetime.UTC)
        event = Event(
            metadata=ObjectMeta(name=name, namespace=pod.namespace),
            involvedObject=ObjectReference(
                apiVersion="v1", kind="Pod", namespace=pod.namespace, name=pod.name, uid=pod.uid
            ),
            reason=reason,
            message=message[:MAX_MESSAGE],
            type=event_type,
            source=EventSource(component=COMPONENT),
            firstTimestamp=now,
            lastTimestamp=now,
            count=1,
        )
        where = f"{pod.namespace}/{pod.name}"
        try:
            async with self._writes:
                await self._write(name, event)
        except ApiFailure as failure:
            self._api_errors.record(
                failure, "events", "could not record an event", pod=where, reason=reason
            )
        except Exception as error:  # a surprise of the client library: still only a courtesy
            log.warning(
                "could not record an event",
                extra={"pod": where, "reason": reason, "error": str(error)},
            )

    async def _write(self, name: str, event: Event) -> None:
        try:
            with api_call("create"):
                await self._client.create(event)
            self._remember(name, 1)
            return
        except ApiFailure as failure:
            if failure.code != 409:
                raise
        # Told before (by this process, an earlier one or another replica): bump that Event.
        bump: dict[str, object] = {"lastTimestamp": event.to_dict()["lastTimestamp"]}
        count = self._counts.get(name)
        if count is not None:
            bump["count"] = count + 1
            self._remember(name, count + 1)
        namespace = event.metadata.namespace if event.metadata else None
        with api_call("patch"):
            await self._client.patch(
                Event, name, bump, namespace=namespace, patch_type=PatchType.MERGE
            )

    def _remember(self, name: str, count: int) -> None:
        self._counts[name] = count
        self._counts.move_to_end(name)
        while len(self._counts) > REMEMBERED_EVENTS:
            self._counts.popitem(last=False)
