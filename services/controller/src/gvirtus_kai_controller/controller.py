"""The controller's loop: watch EndpointSlices and pods into ``Placement``, carry out its decisions.

Three tasks share one ``Placement`` on one event loop (no locks needed): two watches feed it and
wake the reconciler, which, while this replica leads, patches pods, records Events and evicts.
The watches are ``ListWatch``es: API failures retried with backoff, expired versions listed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from gvirtus_kai_common.gvirtus import properties_json
from gvirtus_kai_common.kube import ApiErrors, ApiFailure, ListWatch, api_call
from gvirtus_kai_common.logs import clip
from lightkube import ALL_NS, AsyncClient
from lightkube.core.client import LabelSelector
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from gvirtus_kai_controller.demand import Placeholders
from gvirtus_kai_controller.events import EventRecorder
from gvirtus_kai_controller.leader import LeaderElector
from gvirtus_kai_controller.loadpoll import LoadPoller, Outcome
from gvirtus_kai_controller.metrics import Metrics
from gvirtus_kai_controller.objects import assignment_patch, pod_info, slice_endpoints
from gvirtus_kai_controller.placement import (
    Assignment,
    Backend,
    Placement,
    PodInfo,
    placeholders_needed,
)
from gvirtus_kai_controller.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Patches in flight at once: enough to keep the API server busy, few enough to stay polite.
PARALLEL_WRITES = 16
# The reconciler also runs this often without news: eviction deadlines, retries.
TICK_SECONDS = 1.0
# Waiting pods are told why at most this often (one pass over the queue).
TELL_INTERVAL_SECONDS = 0.5
# Placeholders are brought to the demand at most this often.
DEMAND_INTERVAL_SECONDS = 0.5
EVICTION_RETRY_SECONDS = 10.0
# On stop, writes in flight (patches, Events, evictions) get this long to be answered.
STOP_GRACE_SECONDS = 3.0

ACCOUNT = "controller"  # whose ServiceAccount a 403 hint names

# The two kinds watched; constrained so each use is checked as Pod and as EndpointSlice.
R = TypeVar("R", Pod, EndpointSlice)


class Controller:
    def __init__(
        self,
        client: AsyncClient,
        settings: Settings,
        metrics: Metrics,
        *,
        elector: LeaderElector | None = None,
        clock: Callable[[], float] = time.monotonic,
        eviction_retry: float = EVICTION_RETRY_SECONDS,
    ) -> None:
        """``clock``: monotonic seconds, for every deadline (a wall-clock step moves none)."""
        self._client = client
        self._settings = settings
        self.metrics = metrics
        self._eviction_retry = eviction_retry
        self._elector = elector
        self._clock = clock
        self._api_errors = ApiErrors(metrics.api_errors, ACCOUNT)
        self._events = EventRecorder(client, self._api_errors)
        self.placement = Placement(
            settings.policy,
            settings.max_pods_per_backend,
            max_clients_per_backend=settings.max_clients_per_backend,
            port_name=settings.backend_port_name,
        )
        self._poller = LoadPoller(settings.load_timeout_seconds)
        self._poll_outcomes: dict[str, Outcome] = {}
        self.placeholders: Placeholders | None = None
        if settings.demand_enabled:
            self.placeholders = Placeholders(client, settings, metrics, self._api_errors)
        placeholders = self.placeholders
        metrics.watch(
            self.placement,
            lambda: self.leading,
            lambda: placeholders.count if placeholders is not None else 0,
        )
        self._demand_at = -DEMAND_INTERVAL_SECONDS
        self._wake = asyncio.Event()
        self._writes = asyncio.Semaphore(PARALLEL_WRITES)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listed: set[str] = set()
        # Per-pod state (retry backoff, eviction retry, reason told) is kept by the placement
        # beside the pod: ``placement.timers(pod)``; removing the pod drops it.
        self._told_at = -TELL_INTERVAL_SECONDS
        self._running: list[asyncio.Task[Any]] = []

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self._elector is None or self._elector.leading

    def healthy(self) -> bool:
        """Every loop of the controller is still running."""
        return bool(self._running) and not any(task.done() for task in self._running)

    def ready(self) -> bool:
        """The initial lists are in: this replica knows the backends and every pod."""
        return self.placement.synced

    def leadership_changed(self, leading: bool) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Watch and reconcile until cancelled; returns only if a loop fails unexpectedly."""
        loops: list[Awaitable[None]] = [
            self._follow(
                EndpointSlice,
                self._settings.namespace,
                {SERVICE_NAME_LABEL: self._settings.backend_service},
                self._slices_listed,
                self._slice_event,
            ).run(),
            self._follow(
                Pod,
                ALL_NS,
                {self._settings.enable_label: "true"},
                self._pods_listed,
                self._pod_event,
            ).run(),
            self._reconcile_forever(),
            self._poll_loads_forever(),
        ]
        if self.placeholders is not None:
            loops.append(self.placeholders.run())
        if self._elector is not None:
            loops.append(self._elector.run())
        self._running = [asyncio.ensure_future(loop) for loop in loops]
        try:
            done, _ = await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended it
        finally:
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    async def stop(self) -> None:
        """After ``run`` was cancelled: give in-flight writes a moment, then give up the Lease.

        Writes still unanswered after that are abandoned: an assignment patch is conditional,
        so a half-done one is simply redone by the next leader from the pods' state.
        """
        pending = list(self._tasks)
        if pending:
            _, unfinished = await asyncio.wait(pending, timeout=STOP_GRACE_SECONDS)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            if unfinished:
                log.info("stopping with writes unfinished", extra={"writes": len(unfinished)})
        await self._poller.close()
        if self._elector is not None:
            await self._elector.release()

    # -- watches ----------------------------------------------------------------------------

    def _follow(
        self,
        resource: type[R],
        namespace: str,
        labels: LabelSelector,
        listed: Callable[[list[R]], Awaitable[None]],
        changed: Callable[[str, R], Awaitable[None]],
    ) -> ListWatch[R]:
        return ListWatch(
            self._client,
            resource,
            listed=listed,
            changed=changed,
            api_errors=self.metrics.api_errors,
            watch_restarts=self.metrics.watch_restarts,
            account=ACCOUNT,
            namespace=namespace,
            labels=labels,
        )

    def _after_list(self, resource: str) -> None:
        self._listed.add(resource)
        if not self.placement.synced and self._listed >= {"pods", "endpointslices"}:
            self.placement.mark_synced(self._clock())
            log.info(
                "state rebuilt from the API",
                extra={
                    "pods": self.placement.pod_count,
                    "backends": len(self.placement.backends),
                    "waiting": self.placement.waiting_count,
                },
            )
        self._wake.set()

    async def _slices_listed(self, slices: list[EndpointSlice]) -> None:
        port, agent = self._settings.backend_port_name, self._settings.agent_port_name
        endpoints = {
            s.metadata.name: slice_endpoints(s, port, agent)
            for s in slices
            if s.metadata and s.metadata.name
        }
        self._backends_gone(self.placement.replace_slices(endpoints, self._clock()))
        self._after_list("endpointslices")

    async def _slice_event(self, event_type: str, endpoint_slice: EndpointSlice) -> None:
        name = endpoint_slice.metadata.name if endpoint_slice.metadata else None
        if not name:
            return
        now = self._clock()
        if event_type == "DELETED":
            gone = self.placement.remove_slice(name, now)
        else:
            endpoints = slice_endpoints(
                endpoint_slice, self._settings.backend_port_name, self._settings.agent_port_name
            )
            gone = self.placement.set_slice(name, endpoints, now)
        self._backends_gone(gone)
        self._wake.set()

    def _backends_gone(self, gone: list[Backend]) -> None:
        for backend in gone:
            self.metrics.backends_lost.inc()
            log.warning("backend lost", extra={"backend": backend.address, "zone": backend.zone})

    async def _pods_listed(self, pods: list[Pod]) -> None:
        self.placement.replace_pods(self._read_pods(pods), self._clock())
        self._after_list("pods")

    def _read_pods(self, pods: Iterable[Pod]) -> Iterable[PodInfo]:
        for pod in pods:
            try:
                yield pod_info(pod)
            except ValueError as error:
                log.warning("pod skipped", extra={"error": str(error)})

    async def _pod_event(self, event_type: str, pod: Pod) -> None:
        for info in self._read_pods([pod]):
            if event_type == "DELETED":
                self.placement.remove_pod(info.key)
            else:
                self.placement.upsert_pod(info, self._clock())
        self._wake.set()

    # -- reconciling ------------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            if not self.placement.synced:
                continue
            if not self.leading:
                continue
            for assignment in self.placement.assign():
                self._spawn(self._write_assignment(assignment))
            self._report_losses()
            self._tell_waiting()
            self._evict_due()
            self._meet_demand()

    def _meet_demand(self) -> None:
        """Placeholders for the pods that waited too long with no backend room for them."""
        if self.placeholders is None:
            return
        now = self._clock()
        if now - self._demand_at < DEMAND_INTERVAL_SECONDS:
            return
        self._demand_at = now
        settings = self._settings
        # Wait is measured from creation, wall clock: it survives a controller restart.
        waiting = self.placement.without_room(time.time(), settings.demand_wait_seconds)
        wanted = placeholders_needed(
            waiting, self.placement.per_backend_capacity, settings.demand_max_placeholders
        )
        for write in self.placeholders.reconcile(wanted):
            self._spawn(write)

    # -- measured load ----------------------------------------------------------------------

    async def _poll_loads_forever(self) -> None:
        interval = self._settings.load_poll_seconds
        while True:
            started = self._clock()
            if self.placement.synced and self.leading:
                await self._poll_loads()
            await asyncio.sleep(max(0.0, interval - (self._clock() - started)))

    async def _poll_loads(self) -> None:
        polls = await self._poller.poll(self.placement.backends)
        outcomes: dict[str, Outcome] = {}
        for address, poll in polls.items():
            self.metrics.load_polls.labels(poll.outcome).inc()
            outcomes[address] = poll.outcome
            if self._poll_outcomes.get(address, "ok") != poll.outcome:  # told once per change
                level = logging.INFO if poll.outcome == "ok" else logging.WARNING
                log.log(
                    level,
                    "backend load known" if poll.outcome == "ok" else "backend load unknown",
                    extra={"backend": address, "outcome": poll.outcome},
                )
        self._poll_outcomes = outcomes
        self.placement.set_loads({address: poll.load for address, poll in polls.items()})
        self._wake.set()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_assignment(self, assignment: Assignment) -> None:
        pod, backend = assignment.pod, assignment.backend
        settings = self._settings
        threads = pod.threads or settings.frontend_threads
        properties = properties_json(backend.ip, backend.port, settings.plugins, threads)
        patch = assignment_patch(pod, backend, properties, pin_zone=settings.policy == "sameZone")
        async with self._writes:
            if not self.leading:  # lost the lease while this write waited its turn
                self.placement.assignment_failed(assignment, self._clock())
                return
            try:
                with api_call("patch"):
                    answer = await self._client.patch(
                        Pod, pod.name, patch, namespace=pod.namespace, patch_type=PatchType.MERGE
                    )
            except ApiFailure as failure:
                refused: ApiFailure | None = failure
            else:
                refused = None
        if refused is not None:  # handled outside the semaphore: a retry may wait a while
            await self._assignment_refused(assignment, refused)
            return
        info = pod_info(answer)
        self.placement.assignment_done(assignment, info, self._clock())
        self.placement.timers(info).retry.reset()
        self.metrics.assignments.inc()
        # Creation time is wall-clock time: so is this latency, the one figure that is.
        self.metrics.assignment_latency.observe(max(0.0, time.time() - pod.created))
        zone = f" in zone {backend.zone}" if settings.policy == "sameZone" and backend.zone else ""
        load = self.placement.load(backend.address)
        used = f"{load} pod{'' if load == 1 else 's'} on it"
        if settings.policy == "leastLoaded" or settings.max_clients_per_backend > 0:
            used = assignment.load  # what the decision was made on, before this pod counted
        log.info(
            "backend assigned",
            extra={"pod": f"{pod.namespace}/{pod.name}", "backend": backend.address},
        )
        self._spawn(
            self._events.record(
                info,
                "BackendAssigned",
                f"assigned GVirtuS backend {backend.address}{zone} "
                f"(policy {settings.policy}; {used})",
            )
        )
        self._wake.set()

    async def _assignment_refused(self, assignment: Assignment, failure: ApiFailure) -> None:
        pod = assignment.pod
        where = {"pod": f"{pod.namespace}/{pod.name}"}
        code = failure.code
        if code == 409:
            self._api_errors.record(
                failure,
                "pods",
                "pod changed since read; deciding again",
                level=logging.INFO,
                **where,
            )
            # The pod changed since it was read: read it again and decide again.
            self.metrics.conflicts.inc()
            await self._reread(pod)
            self.placement.assignment_failed(assignment, self._clock())
            self._wake.set()
            return
        if code == 404:
            self._api_errors.record(
                failure, "pods", "pod deleted before its assignment", level=logging.INFO, **where
            )
            self.placement.remove_pod(pod.key)
            return
        delay = 1.0 + self.placement.timers(pod).retry.next_delay()
        self._api_errors.record(
            failure,
            "pods",
            "assignment refused; retrying later",
            level=logging.ERROR,
            retry_in_seconds=delay,
            **where,
        )
        if code is not None:
            self._spawn(
                self._events.record(
                    pod,
                    "WaitingForBackend",
                    f"the API server refused the backend assignment ({code}): "
                    f"{clip(failure.message, 300)}",
                    "Warning",
                )
            )
        await asyncio.sleep(delay)  # the slot stays reserved meanwhile
        self.placement.assignment_failed(assignment, self._clock())
        self._wake.set()

    async def _reread(self, pod: PodInfo) -> None:
        try:
            with api_call("get"):
                fresh = await self._client.get(Pod, pod.name, namespace=pod.namespace)
        except ApiFailure as failure:
            if failure.code == 404:
                self.placement.remove_pod(pod.key)
                return
            # The watch brings the news instead.
            self._api_errors.record(
                failure, "pods", "could not read the pod again", pod=f"{pod.namespace}/{pod.name}"
            )
            return
        for info in self._read_pods([fresh]):
            self.placement.upsert_pod(info, self._clock())

    def _tell_waiting(self) -> None:
        """One ``WaitingForBackend`` Event per waiting pod and distinct reason."""
        now = self._clock()
        if now - self._told_at < TELL_INTERVAL_SECONDS:
            return
        self._told_at = now
        news: Counter[str] = Counter()
        shared_reason: str | None = None
        for pod in self.placement.waiting_pods():
            if pod.problem is None and (
                pod.zones.unrestricted or self._settings.policy != "sameZone"
            ):
                if shared_reason is None:
                    shared_reason = self.placement.waiting_reason(pod)
                reason = shared_reason
            else:
                reason = self.placement.waiting_reason(pod)
            timers = self.placement.timers(pod)
            if timers.told != reason:
                timers.told = reason
                news[reason] += 1
                self._spawn(self._events.record(pod, "WaitingForBackend", reason, "Warning"))
        for reason, count in news.items():
            log.info("pods wait for a backend", extra={"pods": count, "why": reason})

    def _report_losses(self) -> None:
        settings = self._settings
        for lost in self.placement.take_lost_news():
            pod = lost.pod
            if settings.on_backend_loss == "keep":
                what = "the pod is kept (onBackendLoss=keep); delete it to get a ready backend"
            elif pod.controller_owned:
                what = (
                    f"the pod will be evicted after {settings.backend_loss_grace_seconds:g}s "
                    "unless the backend comes back"
                )
            else:
                what = "the pod has no controller to recreate it, so it is kept"
            self._spawn(
                self._events.record(
                    pod,
                    "BackendLost",
                    f"GVirtuS backend {lost.address} is no longer ready; {what}",
                    "Warning",
                    detail=lost.address,
                )
            )

    def _evict_due(self) -> None:
        if self._settings.on_backend_loss != "evict":
            return
        now = self._clock()
        due = self.placement.due_for_eviction(now, self._settings.backend_loss_grace_seconds)
        for pod in due:
            timers = self.placement.timers(pod)
            if timers.next_eviction > now:
                continue
            timers.next_eviction = now + self._eviction_retry
            self._spawn(self._evict(pod))

    async def _evict(self, pod: PodInfo) -> None:
        eviction = Pod.Eviction(metadata=ObjectMeta(name=pod.name, namespace=pod.namespace))
        async with self._writes:
            try:
                with api_call("create"):
                    await self._client.create(eviction, name=pod.name, namespace=pod.namespace)
            except ApiFailure as failure:
                if failure.code == 404:
                    self.metrics.evictions.labels("gone").inc()
                    return
                # 429: a PodDisruptionBudget blocks it for now.
                self.metrics.evictions.labels("blocked" if failure.code == 429 else "error").inc()
                self._api_errors.record(
                    failure,
                    "pods/eviction",
                    "eviction refused; trying again later",
                    pod=f"{pod.namespace}/{pod.name}",
                    retry_in_seconds=self._eviction_retry,
                )
                return
        self.metrics.evictions.labels("evicted").inc()
        log.info("pod evicted: its backend is gone", extra={"pod": f"{pod.namespace}/{pod.name}"})
