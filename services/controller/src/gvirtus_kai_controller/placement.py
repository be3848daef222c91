"""What the controller knows and decides, without any I/O.

``Placement`` holds the ready backends (from the EndpointSlices) and the GVirtuS pods (from their
annotations and gates), and answers: which waiting pod gets which backend now, why the others
wait, which pods lost their backend, which of those are due for eviction. The async loop feeds it
watch events and carries out what it decides; unit tests call it directly.

Cost per decision is O(backends + log pods): loads are counted incrementally as pods come and go,
and waiting pods sit in a heap ordered by priority, then creation time.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

from gvirtus_kai_common.backoff import Backoff

Policy = Literal["leastPods", "leastLoaded", "random", "sameZone"]
POLICIES: tuple[Policy, ...] = ("leastPods", "leastLoaded", "random", "sameZone")

PodKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, order=True)
class Backend:
    """One ready backend pod: where GVirtuS pods connect (its pod IP and container port)."""

    ip: str
    port: int
    zone: str | None = field(default=None, compare=False)
    agent_port: int | None = field(default=None, compare=False)  # the load agent's, if any

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @cached_property
    def sort_key(self) -> tuple[int, int]:
        """Numeric IP, then port: the stable tie-break between equally loaded backends."""
        return int(ipaddress.IPv4Address(self.ip)), self.port


@dataclass(frozen=True)
class BackendLoad:
    """What a backend's agent measured: the distinct client addresses connected to GVirtuS and
    the utilisation of each of its GPUs (0..1)."""

    clients: frozenset[str] = frozenset()
    connections: int = 0
    gpu_utilization: tuple[float, ...] = ()

    @property
    def mean_gpu_utilization(self) -> float:
        """Mean over the GPUs; a backend without GPU readings counts as idle."""
        if not self.gpu_utilization:
            return 0.0
        return sum(self.gpu_utilization) / len(self.gpu_utilization)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of an EndpointSlice, reduced to what placement needs.

    ``identity`` names the backend pod (its targetRef, else its first address) so a dual-stack
    pod listed in an IPv4 and an IPv6 slice counts once. ``backend`` is set only when the
    endpoint can serve GVirtuS: ready, an IPv4 address, and the named port on its slice.
    """

    identity: str
    ready: bool
    ipv4: bool = True
    backend: Backend | None = None


@dataclass(frozen=True)
class ZoneTerm:
    """The zone part of one required node-selector term: (operator, values) on the zone key."""

    requirements: tuple[tuple[str, frozenset[str]], ...] = ()

    def allows(self, zone: str | None) -> bool:
        for operator, values in self.requirements:
            if operator == "In" and zone not in values:
                return False
            if operator == "NotIn" and zone in values:
                return False
            if operator == "Exists" and zone is None:
                return False
            if operator == "DoesNotExist" and zone is not None:
                return False
        return True


@dataclass(frozen=True)
class ZoneConstraint:
    """Where the pod's own nodeSelector and required node affinity let it run, by zone.

    Only the zone key is looked at: other keys are about nodes the controller does not watch.
    Terms are ORed, requirements within a term ANDed, as the scheduler does.
    """

    node_selector: str | None = None
    terms: tuple[ZoneTerm, ...] = ()

    @property
    def unrestricted(self) -> bool:
        return self.node_selector is None and all(not t.requirements for t in self.terms)

    def allows(self, zone: str | None) -> bool:
        if self.node_selector is not None and zone != self.node_selector:
            return False
        return not self.terms or any(term.allows(zone) for term in self.terms)


ANY_ZONE = ZoneConstraint()


@dataclass(frozen=True)
class PodInfo:
    """One GVirtuS pod as placement sees it, read from a watch event or an API answer."""

    namespace: str
    name: str
    uid: str
    created: float  # creation time, seconds since the epoch
    priority: int = 0
    gated: bool = False  # carries our scheduling gate
    backend: str | None = None  # the backend annotation, when present
    live: bool = True  # not terminating, not Succeeded/Failed
    controller_owned: bool = False  # has an ownerReference with controller: true
    zones: ZoneConstraint = ANY_ZONE
    # What the assignment patch is built from, as read at ``resource_version``.
    resource_version: str = ""
    gates: tuple[str, ...] = ()
    node_selector_terms: tuple[Mapping[str, Any], ...] = ()  # required node affinity, as JSON
    threads: int | None = None  # communicator entries the pod asks for; None: the default
    problem: str | None = None  # why the pod's own annotations keep it from any backend
    ip: str | None = None  # the pod's IP once it runs: how a backend's agent sees it connected

    @property
    def key(self) -> PodKey:
        return self.namespace, self.name


def _retry_backoff() -> Backoff:
    return Backoff(initial=2.0, maximum=60.0)


@dataclass
class PodTimers:
    """What the controller keeps of one pod between decisions. It lives beside the pod in
    ``Placement``, so a deleted pod, or a new pod of the same name, starts from nothing.
    Times are monotonic seconds."""

    uid: str
    retry: Backoff = field(default_factory=_retry_backoff)  # refused assignments
    next_eviction: float = 0.0  # while lost: no eviction attempt before this
    told: str | None = None  # while waiting: the reason last recorded in an Event


@dataclass(frozen=True)
class Assignment:
    pod: PodInfo
    backend: Backend
    load: str = ""  # the backend's load the decision used, as told in its Event


def placeholders_needed(waiting: int, per_backend: int, maximum: int) -> int:
    """Placeholder pods for ``waiting`` pods no ready backend has room for: one per missing
    backend (``per_backend`` pods each; 0 = unlimited, so one backend takes them all), at most
    ``maximum``."""
    if waiting <= 0 or maximum <= 0:
        return 0
    backends = 1 if per_backend <= 0 else math.ceil(waiting / per_backend)
    return min(backends, maximum)


@dataclass(frozen=True)
class LostPod:
    """A live pod whose backend is no longer among the ready ones."""

    pod: PodInfo
    address: str


class Placement:
    """Backends, pods, loads and the waiting queue; every method is synchronous and pure."""

    def __init__(
        self,
        policy: Policy = "leastPods",
        max_pods_per_backend: int = 0,
        *,
        max_clients_per_backend: int = 0,
        port_name: str = "gvirtus",
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.max_pods_per_backend = max_pods_per_backend
        self.max_clients_per_backend = max_clients_per_backend
        self.port_name = port_name
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not cryptography
        self._slices: dict[str, tuple[Endpoint, ...]] = {}
        self._backends: dict[str, Backend] = {}  # address -> ready backend
        self._pods: dict[PodKey, PodInfo] = {}
        self._members: dict[str, set[PodKey]] = {}  # address -> live pods counted on it
        self._counted: dict[PodKey, str] = {}  # pod -> the address it is counted on
        self._in_flight: dict[PodKey, Assignment] = {}  # decided, patch not answered yet
        self._waiting: dict[PodKey, PodInfo] = {}
        self._queue: list[tuple[int, float, str, str, str]] = []  # lazily pruned heap
        self._lost_since: dict[PodKey, float] = {}
        self._lost_news: dict[PodKey, str] = {}  # lost pods not reported yet -> address
        self._timers: dict[PodKey, PodTimers] = {}
        self._synced = False
        # Measured loads by address; an address absent is unknown (its agent did not answer).
        self._measured: dict[str, BackendLoad] = {}
        # Per address: counted pods whose IP the agent has not seen connected (kept up to date
        # as pods are counted, so a decision costs O(1) per backend).
        self._pending: dict[str, int] = {}

    # -- backends ---------------------------------------------------------------------------

    def set_slice(self, name: str, endpoints: Iterable[Endpoint], now: float) -> list[Backend]:
        """Record one EndpointSlice's endpoints; return the backends that stopped being ready."""
        self._slices[name] = tuple(endpoints)
        return self._refresh_backends(now)

    def remove_slice(self, name: str, now: float) -> list[Backend]:
        self._slices.pop(name, None)
        return self._refresh_backends(now)

    def replace_slices(self, slices: Mapping[str, Iterable[Endpoint]], now: float) -> list[Backend]:
        """The full set after a (re)list: slices not in it are gone."""
        self._slices = {name: tuple(endpoints) for name, endpoints in slices.items()}
        return self._refresh_backends(now)

    def _refresh_backends(self, now: float) -> list[Backend]:
        backends: dict[str, Backend] = {}
        for endpoints in self._slices.values():
            for endpoint in endpoints:
                if endpoint.backend is not None:
                    backends.setdefault(endpoint.backend.address, endpoint.backend)
        gone = [b for address, b in self._backends.items() if address not in backends]
        back = [address for address in backends if address not in self._backends]
        self._backends = backends
        if self._synced:
            for backend in gone:
                for key in self._members.get(backend.address, ()):
                    self._mark_lost(key, backend.address, now)
            for address in back:
                for key in self._members.get(address, ()):
                    self._unmark_lost(key)
        return sorted(gone)

    @property
    def backends(self) -> list[Backend]:
        return sorted(self._backends.values(), key=lambda b: b.sort_key)

    def load(self, address: str) -> int:
        """Live pods counted on ``address`` (assigned, or with an assignment in flight)."""
        return len(self._members.get(address, ()))

    def loads(self) -> dict[str, int]:
        """Load of every ready backend, and of any other address live pods still point at."""
        loads = dict.fromkeys(self._backends, 0)
        loads.update({a: len(keys) for a, keys in self._members.items() if keys})
        return loads

    def set_loads(self, loads: Mapping[str, BackendLoad | None]) -> None:
        """What the agents answered, by backend address; None (or absent): unknown."""
        self._measured = {a: load for a, load in loads.items() if load is not None}
        self._pending = {a: self._count_pending(a) for a in self._members}

    def measured(self, address: str) -> BackendLoad | None:
        return self._measured.get(address)

    def pending(self, address: str) -> int:
        """Pods counted on ``address`` that its agent does not list as connected."""
        return self._pending.get(address, 0)

    def clients(self, address: str) -> int:
        """Measured clients plus pending pods; pods counted when the load is unknown."""
        load = self._measured.get(address)
        if load is None:
            return self.load(address)
        return len(load.clients) + self.pending(address)

    def _count_pending(self, address: str) -> int:
        load = self._measured.get(address)
        clients = load.clients if load is not None else frozenset()
        return sum(1 for key in self._members.get(address, ()) if self._ip(key) not in clients)

    def _ip(self, key: PodKey) -> str | None:
        pod = self._pods.get(key)
        return pod.ip if pod is not None else None

    def describe_load(self, backend: Backend) -> str:
        """The load placement sees on ``backend``, in words."""
        address = backend.address
        load = self._measured.get(address)
        pods = self.load(address)
        if load is None:
            return f"load unknown: no answer from its agent; {pods} pod{_s(pods)} on it"
        clients = len(load.clients)
        return (
            f"{clients} client{_s(clients)}, {self.pending(address)} pending, "
            f"GPU {load.mean_gpu_utilization:.0%}"
        )

    # -- pods -------------------------------------------------------------------------------

    def upsert_pod(self, info: PodInfo, now: float) -> None:
        """Record a pod as last seen (watch event, list, or the answer to our patch)."""
        old = self._pods.get(info.key)
        if old is not None and old.uid == info.uid and info.gated and not old.gated:
            # Gates are never added back: a gated copy of a pod already seen released is an
            # older version (a watch event delivered after our patch's answer), not news.
            info = replace(info, gated=False, backend=old.backend)
        if old is not None and old.uid != info.uid:  # deleted and created again meanwhile
            self._timers.pop(info.key, None)
        if old is not None and old.ip != info.ip:
            self._uncount(info.key)  # counted again below, connected or pending by its new IP
        self._pods[info.key] = info
        self._place(info, now)

    def remove_pod(self, key: PodKey) -> None:
        """Forget the pod and everything kept for it."""
        self._uncount(key)  # first: whether it was pending depends on the pod's IP
        self._pods.pop(key, None)
        self._timers.pop(key, None)
        self._in_flight.pop(key, None)
        self._waiting.pop(key, None)
        self._unmark_lost(key)

    def replace_pods(self, pods: Iterable[PodInfo], now: float) -> None:
        """The full set after a (re)list: pods not in it were deleted meanwhile."""
        listed = {pod.key: pod for pod in pods}
        for key in [k for k in self._pods if k not in listed]:
            self.remove_pod(key)
        for info in listed.values():
            self.upsert_pod(info, now)

    @property
    def pod_count(self) -> int:
        return len(self._pods)

    def pod(self, key: PodKey) -> PodInfo | None:
        return self._pods.get(key)

    def timers(self, pod: PodInfo) -> PodTimers:
        """The timers of ``pod``; for a pod no longer known (or known under another uid), new
        ones that are not kept."""
        current = self._pods.get(pod.key)
        if current is None or current.uid != pod.uid:
            return PodTimers(pod.uid)
        timers = self._timers.get(pod.key)
        if timers is None or timers.uid != pod.uid:
            timers = self._timers[pod.key] = PodTimers(pod.uid)
        return timers

    def _timer_reset(self, key: PodKey, *, told: bool = False, eviction: bool = False) -> None:
        timers = self._timers.get(key)
        if timers is not None:
            if told:
                timers.told = None
            if eviction:
                timers.next_eviction = 0.0

    def _place(self, info: PodInfo, now: float) -> None:
        key = info.key
        in_flight = self._in_flight.get(key)
        if in_flight is not None and in_flight.pod.uid != info.uid:
            # The pod was deleted and created again under the same name: the patch will fail.
            in_flight = None
        # A pod still gated never ran, so an annotation it carries (say, copied from another
        # pod) holds no connection: it counts only once assigned here.
        address: str | None = None
        if info.live:
            if in_flight is not None:
                address = in_flight.backend.address
            elif not info.gated:
                address = info.backend
        self._count(key, address)
        if address is None:
            self._unmark_lost(key)
        elif self._synced and address not in self._backends:
            self._mark_lost(key, address, now)
        else:
            self._unmark_lost(key)
        if info.live and info.gated and in_flight is None:
            if self._waiting.get(key) != info:
                self._waiting[key] = info
                heapq.heappush(self._queue, _queue_entry(info))
        elif self._waiting.pop(key, None) is not None:
            self._timer_reset(key, told=True)  # told again should it wait again

    def _count(self, key: PodKey, address: str | None) -> None:
        if self._counted.get(key) == address:
            return
        self._uncount(key)
        if address is not None:
            self._counted[key] = address
            self._members.setdefault(address, set()).add(key)
            if self._is_pending(key, address):
                self._pending[address] = self._pending.get(address, 0) + 1

    def _uncount(self, key: PodKey) -> None:
        address = self._counted.pop(key, None)
        if address is not None:
            members = self._members[address]
            members.discard(key)
            if self._is_pending(key, address):
                self._pending[address] -= 1
            if not members:
                del self._members[address]
                self._pending.pop(address, None)

    def _is_pending(self, key: PodKey, address: str) -> bool:
        load = self._measured.get(address)
        return load is None or self._ip(key) not in load.clients

    # -- deciding ---------------------------------------------------------------------------

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    def waiting_pods(self) -> list[PodInfo]:
        """Waiting pods in the order they are served."""
        return sorted(self._waiting.values(), key=_queue_entry)

    def choose(self, pod: PodInfo) -> Backend | None:
        """The backend ``pod`` would get now under the policy, or None when none may take it."""
        candidates = [b for b in self._backends.values() if self._has_room(b)]
        if self.policy == "sameZone" and not pod.zones.unrestricted:
            candidates = [b for b in candidates if pod.zones.allows(b.zone)]
        if not candidates:
            return None
        if self.policy == "random":
            return self._rng.choice(sorted(candidates))
        if self.policy == "leastLoaded":
            return min(candidates, key=self._load_rank)
        return min(candidates, key=lambda b: (self.load(b.address), b.sort_key))

    def _load_rank(self, backend: Backend) -> tuple[int, float, tuple[int, int]]:
        load = self._measured.get(backend.address)
        utilization = load.mean_gpu_utilization if load is not None else 0.0
        return self.clients(backend.address), utilization, backend.sort_key

    def _has_room(self, backend: Backend) -> bool:
        pods = self.max_pods_per_backend
        if pods > 0 and self.load(backend.address) >= pods:
            return False
        clients = self.max_clients_per_backend
        return clients <= 0 or self.clients(backend.address) < clients

    @property
    def per_backend_capacity(self) -> int:
        """Pods one new backend takes at most (the tighter limit); 0: unlimited."""
        limits = [n for n in (self.max_pods_per_backend, self.max_clients_per_backend) if n > 0]
        return min(limits, default=0)

    def without_room(self, now: float, wait_seconds: float) -> int:
        """Waiting pods older than ``wait_seconds`` (creation time, wall-clock ``now``) that
        no ready backend has room for: the demand a new backend would serve."""
        room = [b for b in self._backends.values() if self._has_room(b)]
        count = 0
        for pod in self._waiting.values():
            if pod.problem is not None or now - pod.created < wait_seconds:
                continue
            if not room:
                count += 1
            elif self.policy == "sameZone" and not pod.zones.unrestricted:
                count += not any(pod.zones.allows(b.zone) for b in room)
        return count

    def oldest_wait(self, now: float) -> float:
        """Seconds the oldest waiting pod has waited (wall clock); 0 when none waits."""
        oldest = min((pod.created for pod in self._waiting.values()), default=None)
        return 0.0 if oldest is None else max(0.0, now - oldest)

    def assign(self) -> list[Assignment]:
        """Decide for every waiting pod that can be placed now, in priority-then-age order.

        Each decision counts at once on its backend (so the next one sees it) and the pod leaves
        the queue; ``assignment_done`` or ``assignment_failed`` settles it.
        """
        decided: list[Assignment] = []
        passed_over: list[tuple[int, float, str, str, str]] = []
        while self._queue:
            entry = self._queue[0]
            pod = self._waiting.get((entry[2], entry[3]))
            if pod is None or _queue_entry(pod) != entry:
                heapq.heappop(self._queue)  # stale: the pod left the queue or changed
                continue
            if pod.problem is not None:  # waits until its owner fixes it; the rest go on
                passed_over.append(heapq.heappop(self._queue))
                continue
            backend = self.choose(pod)
            if backend is None:
                if self.policy != "sameZone" or pod.zones.unrestricted:
                    break  # nothing has room for anyone: the rest wait too
                passed_over.append(heapq.heappop(self._queue))
                continue
            heapq.heappop(self._queue)
            assignment = Assignment(pod, backend, self.describe_load(backend))
            del self._waiting[pod.key]
            self._timer_reset(pod.key, told=True)
            self._in_flight[pod.key] = assignment
            self._count(pod.key, backend.address)
            decided.append(assignment)
        for entry in passed_over:
            heapq.heappush(self._queue, entry)
        return decided

    def assignment_done(self, assignment: Assignment, answer: PodInfo, now: float) -> None:
        """The patch succeeded; ``answer`` is the pod as the API server returned it."""
        self._in_flight.pop(assignment.pod.key, None)
        self.upsert_pod(answer, now)

    def assignment_failed(self, assignment: Assignment, now: float) -> None:
        """The patch did not apply: free the slot; the pod waits again unless it changed."""
        key = assignment.pod.key
        if self._in_flight.get(key) is assignment:
            del self._in_flight[key]
        current = self._pods.get(key)
        if current is None:
            self._uncount(key)
        else:
            self._place(current, now)

    # -- why pods wait ----------------------------------------------------------------------

    def waiting_reason(self, pod: PodInfo) -> str:
        """Why ``pod`` has no backend yet, as shown in its ``WaitingForBackend`` Event."""
        if pod.problem is not None:
            return pod.problem
        if not self._backends:
            return self._no_backend_reason()
        backends = list(self._backends.values())
        if self.policy == "sameZone" and not pod.zones.unrestricted:
            allowed = [b for b in backends if pod.zones.allows(b.zone)]
            if not allowed:
                zones = sorted({b.zone or "(none)" for b in backends})
                return (
                    f"no ready GVirtuS backend in a zone this pod may run in "
                    f"({len(backends)} ready in zones {', '.join(zones)})"
                )
            backends = allowed
        if all(not self._has_room(b) for b in backends):
            limits = f"maxPodsPerBackend={self.max_pods_per_backend}"
            if self.max_clients_per_backend > 0:
                limits += f", maxClientsPerBackend={self.max_clients_per_backend}"
            return f"all {len(backends)} backends full ({limits})"
        return "waiting for its turn"

    def _no_backend_reason(self) -> str:
        identities: set[str] = set()
        ready: set[str] = set()
        ready_ipv4: set[str] = set()
        for endpoints in self._slices.values():
            for endpoint in endpoints:
                identities.add(endpoint.identity)
                if endpoint.ready:
                    ready.add(endpoint.identity)
                    if endpoint.ipv4:
                        ready_ipv4.add(endpoint.identity)
        counts = f"{len(ready)} of {len(identities)} ready"
        if ready and not ready_ipv4:
            return (
                f"no ready GVirtuS backend has an IPv4 address ({counts}, IPv6 only; "
                f"GVirtuS connects to IPv4 addresses only)"
            )
        if ready:
            # Ready IPv4 endpoints that are no backend: their slice lacks the named port.
            return f"no ready GVirtuS backend serves a port named {self.port_name!r} ({counts})"
        return f"no ready GVirtuS backend ({counts})"

    # -- lost backends ----------------------------------------------------------------------

    def mark_synced(self, now: float) -> None:
        """Both initial lists are in: from now on a pod whose backend is not ready is lost."""
        self._synced = True
        for key, address in self._counted.items():
            if address not in self._backends and key not in self._in_flight:
                self._mark_lost(key, address, now)

    @property
    def synced(self) -> bool:
        return self._synced

    def _mark_lost(self, key: PodKey, address: str, now: float) -> None:
        if key not in self._lost_since:
            self._lost_since[key] = now
            self._lost_news[key] = address

    def _unmark_lost(self, key: PodKey) -> None:
        if self._lost_since.pop(key, None) is not None:
            self._timer_reset(key, eviction=True)
        self._lost_news.pop(key, None)

    def take_lost_news(self) -> list[LostPod]:
        """Pods that lost their backend since the last call (each reported once)."""
        news = [LostPod(self._pods[key], address) for key, address in self._lost_news.items()]
        self._lost_news.clear()
        return news

    def lost_pods(self) -> Iterator[tuple[PodInfo, float]]:
        """Every live pod whose backend is gone, with the time that was noticed."""
        for key, since in self._lost_since.items():
            yield self._pods[key], since

    def due_for_eviction(self, now: float, grace_seconds: float) -> list[PodInfo]:
        """Lost pods past the grace period that a controller will recreate (the others stay)."""
        return [
            pod
            for pod, since in self.lost_pods()
            if pod.controller_owned and now - since >= grace_seconds
        ]


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _queue_entry(pod: PodInfo) -> tuple[int, float, str, str, str]:
    # Highest priority first, then oldest; names and uid make the order total and stable.
    return -pod.priority, pod.created, pod.namespace, pod.name, pod.uid
