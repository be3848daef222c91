"""Placement controller figures next to their targets (``make bench``).

Two parts. In process: ``Placement`` deciding for 5,000 gated pods over 50 backends, then the
steady state (one new pod among 5,000 live ones), timed per decision. End to end: the real
``gvirtus-controller`` process against a real kube-apiserver + etcd (the tests' control plane):
5,000 gated pods created at full speed with 50 ready backends, each pod's latency from its
create call returning to the bench's own watch seeing its gate gone; then, with every backend
full, the time from a new backend's EndpointSlice being written to the first waiting pod's
release. RSS is read from the controller process with all 5,000 pods watched.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from statistics import median

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gvirtus_kai_common.gvirtus import BACKEND_ANNOTATION, BACKEND_GATE  # noqa: E402
from gvirtus_kai_controller.placement import (  # noqa: E402
    Assignment,
    Backend,
    Endpoint,
    Placement,
    PodInfo,
)
from lightkube import AsyncClient, KubeConfig  # noqa: E402
from lightkube.resources.core_v1 import Pod  # noqa: E402
from lightkube.resources.discovery_v1 import EndpointSlice  # noqa: E402

from bench.report import exit_status, percentile, row  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402
from tests.cluster.kube import NODES, Cluster  # noqa: E402
from tests.cluster.release import ensure_namespace  # noqa: E402
from tests.dnsserver import LoopbackDnsServer  # noqa: E402

COMMAND = str(Path(sys.executable).parent / "gvirtus-controller")
TARGET_DECISION_MS = 1.0
TARGET_RELEASE_S = 1.0
TARGET_RSS_MIB = 100.0
TARGET_SPREAD = 1
PARALLEL_CREATES = 32
WAIT = 600.0


# --- in process ------------------------------------------------------------------------------


def decisions(pods: int, backends: int, steady_rounds: int) -> list[str]:
    state = Placement("leastPods")
    endpoints = [
        Endpoint(f"b{i}", True, backend=Backend(f"10.8.{i // 250}.{i % 250 + 1}", 9999))
        for i in range(backends)
    ]
    state.replace_slices({"s": endpoints}, 0.0)
    state.mark_synced(0.0)
    for i in range(pods):
        state.upsert_pod(PodInfo("apps", f"p{i}", f"u{i}", float(i), gated=True), 0.0)
    started = time.perf_counter()
    decided = state.assign()
    all_seconds = time.perf_counter() - started
    for decision in decided:
        pod = decision.pod
        answer = PodInfo(
            pod.namespace, pod.name, pod.uid, pod.created, backend=decision.backend.address
        )
        state.assignment_done(decision, answer, 0.0)
    counts = state.loads().values()

    steady = []
    for i in range(steady_rounds):
        state.remove_pod(("apps", f"p{i}"))  # one leaves, one arrives: 5,000 live pods
        state.upsert_pod(PodInfo("apps", f"n{i}", f"n{i}", float(pods + i), gated=True), 0.0)
        started = time.perf_counter()
        (decision,) = state.assign()
        steady.append(time.perf_counter() - started)
        pod = decision.pod
        answer = PodInfo(
            pod.namespace, pod.name, pod.uid, pod.created, backend=decision.backend.address
        )
        state.assignment_done(decision, answer, 0.0)
    batch_ms = all_seconds / pods * 1000
    steady_ms = [seconds * 1000 for seconds in steady]
    spread = max(counts) - min(counts)
    return [
        row(f"in process: decide {pods} pods over {backends} backends", all_seconds, "s"),
        row("in process: mean decision in that batch", batch_ms, "ms", TARGET_DECISION_MS),
        row("in process: per-backend spread (max - min pods)", spread, "pods", TARGET_SPREAD),
        row("in process: steady-state decision p50", median(steady_ms), "ms"),
        row(
            "in process: steady-state decision p99",
            percentile(steady_ms, 0.99),
            "ms",
            TARGET_DECISION_MS,
        ),
    ]


def settle(state: Placement, decision: Assignment) -> None:
    """What the answer to the assignment patch does to the state."""
    pod = decision.pod
    address = decision.backend.address
    answer = PodInfo(pod.namespace, pod.name, pod.uid, pod.created, backend=address)
    state.assignment_done(decision, answer, 0.0)


# --- against the real API server -------------------------------------------------------------


class Scene:
    """A namespace pair, an enable label and a controller process of their own."""

    def __init__(self, client: AsyncClient, cluster: Cluster, name: str) -> None:
        self.client = client
        self.cluster = cluster
        self.kubeconfig = cluster.plane.admin_kubeconfig
        self.release = f"{name}-system"
        self.apps = f"{name}-apps"
        self.label = f"bench.gvirtus.io/{name}"
        self.released: dict[str, float] = {}
        self.changed = asyncio.Event()

    def create(self) -> None:
        for namespace in (self.release, self.apps):
            ensure_namespace(self.cluster, namespace)

    def pod(self, name: str) -> Pod:
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.apps, "labels": {self.label: "true"}},
            "spec": {
                "schedulingGates": [{"name": BACKEND_GATE}],
                "containers": [{"name": "app", "image": "registry.test/app:1"}],
            },
        }
        pod = Pod.from_dict(manifest)
        assert isinstance(pod, Pod)
        return pod

    def slice(self, name: str, ips: list[str]) -> EndpointSlice:
        manifest = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "namespace": self.release,
                "labels": {"kubernetes.io/service-name": "gvirtus-backend-headless"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "gvirtus", "port": 9999, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
        }
        endpoint_slice = EndpointSlice.from_dict(manifest)
        assert isinstance(endpoint_slice, EndpointSlice)
        return endpoint_slice

    async def start_controller(self, **settings: str) -> asyncio.subprocess.Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            GVIRTUS_KAI_NAMESPACE=self.release,
            GVIRTUS_KAI_BACKEND_SERVICE="gvirtus-backend-headless",
            GVIRTUS_KAI_ENABLE_LABEL=self.label,
            GVIRTUS_KAI_HEALTH_HOST="127.0.0.1",
            GVIRTUS_KAI_HEALTH_PORT="0",
            GVIRTUS_KAI_LOG_LEVEL="warning",
        )
        env.update({f"GVIRTUS_KAI_{k.upper()}": v for k, v in settings.items()})
        return await asyncio.create_subprocess_exec(COMMAND, env=env)

    async def watch_releases(self) -> None:
        """Record when each pod is first seen without the gate."""
        pods = self.client.watch(Pod, namespace=self.apps, labels={self.label: "true"})
        async for _, pod in pods:
            name = pod.metadata.name if pod.metadata else None
            gates = [g.name for g in (pod.spec.schedulingGates or [])] if pod.spec else []
            if name and BACKEND_GATE not in gates and name not in self.released:
                self.released[name] = time.monotonic()
                self.changed.set()

    async def until_released(self, names: list[str]) -> None:
        async with asyncio.timeout(WAIT):
            while not all(name in self.released for name in names):
                self.changed.clear()
                await self.changed.wait()

    async def backends_in_use(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        async for pod in self.client.list(Pod, namespace=self.apps, labels={self.label: "true"}):
            annotations = pod.metadata.annotations if pod.metadata else None
            counts[(annotations or {}).get(BACKEND_ANNOTATION, "none")] += 1
        return counts


async def stop(process: asyncio.subprocess.Process) -> None:
    process.terminate()
    async with asyncio.timeout(30):
        await process.wait()


async def throughput(client: AsyncClient, cluster: Cluster, pods: int, backends: int) -> list[str]:
    scene = Scene(client, cluster, "flow")
    scene.create()
    ips = [f"10.9.{i // 250}.{i % 250 + 1}" for i in range(backends)]
    await client.create(scene.slice("backends", ips))
    controller = await scene.start_controller()
    watcher = asyncio.create_task(scene.watch_releases())
    try:
        await client.create(scene.pod("warm-up"))
        await scene.until_released(["warm-up"])
        names = [f"p{i:05d}" for i in range(pods)]
        created: dict[str, float] = {}
        queue = iter(names)

        async def creator() -> None:
            for name in queue:
                await client.create(scene.pod(name))
                created[name] = time.monotonic()

        started = time.monotonic()
        await asyncio.gather(*(creator() for _ in range(PARALLEL_CREATES)))
        created_all = time.monotonic() - started
        await scene.until_released(names)
        assigned_all = max(scene.released[name] for name in names) - started
        latencies = [max(0.0, scene.released[name] - created[name]) for name in names]
        await asyncio.sleep(2.0)  # let the controller settle before reading its memory
        measured = psutil.Process(controller.pid)
        rss_mib = measured.memory_info().rss / 2**20
        cpu = measured.cpu_times()
        counts = await scene.backends_in_use()
    finally:
        watcher.cancel()
        await stop(controller)
    counts.pop("none", None)
    per_backend = [counts[f"{ip}:9999"] for ip in ips]
    spread = max(per_backend) - min(per_backend)
    return [
        row(
            f"real API: create {pods} gated pods, {PARALLEL_CREATES} at once",
            created_all,
            "s",
        ),
        row(f"real API: first create to all {pods} assigned", assigned_all, "s"),
        row("real API: assignment latency p50 (create -> gate gone)", median(latencies), "s"),
        row("real API: assignment latency p99", percentile(latencies, 0.99), "s"),
        row(
            f"real API: per-backend spread over {backends} backends", spread, "pods", TARGET_SPREAD
        ),
        row(
            f"real API: controller RSS with {pods + 1} pods watched", rss_mib, "MiB", TARGET_RSS_MIB
        ),
        row("real API: controller CPU time (user + system)", cpu.user + cpu.system, "s"),
    ]


async def release_latency(client: AsyncClient, cluster: Cluster, rounds: int) -> list[str]:
    """Every backend full (one pod each); a new ready backend releases the waiting pod."""
    scene = Scene(client, cluster, "release")
    scene.create()
    await client.create(scene.slice("first", ["10.10.0.1"]))
    controller = await scene.start_controller(max_pods_per_backend="1")
    watcher = asyncio.create_task(scene.watch_releases())
    latencies = []
    try:
        await client.create(scene.pod("holder"))
        await scene.until_released(["holder"])
        for i in range(rounds):
            name = f"waiter-{i}"
            await client.create(scene.pod(name))
            await asyncio.sleep(1.0)  # it waits: every backend is full
            assert name not in scene.released, "a pod was released although every backend is full"
            written = time.monotonic()
            await client.create(scene.slice(f"new-{i}", [f"10.10.1.{i + 1}"]))
            await scene.until_released([name])
            latencies.append(scene.released[name] - written)
    finally:
        watcher.cancel()
        await stop(controller)
    name = "real API: new backend -> waiting pod released"
    return [
        row(f"{name}, median of {rounds}", median(latencies), "s"),
        row(f"{name}, worst of {rounds}", max(latencies), "s", TARGET_RELEASE_S),
    ]


async def end_to_end(pods: int, backends: int, rounds: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="controller-bench-") as work:
        plane = ControlPlane(Path(work) / "control-plane").start()
        dns = LoopbackDnsServer().start()
        try:
            cluster = Cluster(plane, dns)
            for node in NODES:  # kube-scheduler binds the released pods, as in a cluster
                cluster.add_node(node)
            client = AsyncClient(
                KubeConfig.from_file(plane.admin_kubeconfig), field_manager="bench"
            )
            try:
                rows = await release_latency(client, cluster, rounds)
                rows += await throughput(client, cluster, pods, backends)
            finally:
                await client.close()
        finally:
            dns.stop()
            plane.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--backends", type=int, default=50)
    parser.add_argument("--steady-rounds", type=int, default=2000)
    parser.add_argument("--release-rounds", type=int, default=5)
    args = parser.parse_args()
    print("controller (placement in process; gvirtus-controller against kube-apiserver + etcd)")
    rows = decisions(args.pods, args.backends, args.steady_rounds)
    print("\n".join(rows), flush=True)
    more = asyncio.run(end_to_end(args.pods, args.backends, args.release_rounds))
    print("\n".join(more))
    return exit_status(rows + more)


if __name__ == "__main__":
    sys.exit(main())
