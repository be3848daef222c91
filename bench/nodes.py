"""The chart on real nodes (``make bench``): what the gate and pin path adds to a pod's start, and
what every component uses in its container after minutes of the whole flow.

A cluster of ``tests/node`` (instance 3: the test session and ``make cluster`` keep theirs), the
chart installed from the working tree with the local images. Then:

- **Pod start.** The same pod, one at a time, alternately with the GVirtuS label (admitted by the
  webhook pod, gated, pinned by the controller pod, scheduled once the gate is gone) and without
  it (scheduled at once), timed from the create call to the pod's Ready condition as a watch sees
  it. Both request one virtual GPU; the plain-GPU-pod guard is turned off for the run, since its
  whole point is keeping the unlabelled one off the frontend node. What the path adds is the
  difference of the two series' p99 (target: at most 1 s).
- **Memory.** The examples' pods (the stand-in frontend, several threads each) are created and
  deleted in rounds for ``--flow-seconds`` (5 minutes by default); then each component container's
  working set is read from its memory cgroup on the node (usage minus inactive file pages, what
  the kubelet reports), shown beside the chart's request and limit. Target: every limit at least
  25% above the measured working set.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightkube.resources.core_v1 import Pod  # noqa: E402

from bench.report import exit_status, info, percentile, row  # noqa: E402
from tests.node import chart  # noqa: E402
from tests.node.cluster import up  # noqa: E402
from tests.node.kube import Kube, is_ready, wait_until  # noqa: E402
from tests.node.workloads import example_pods, gvirtus_pod, load_standin_examples  # noqa: E402

INSTANCE = 3
TARGET_ADDED_P99_S = 1.0
LIMIT_HEADROOM = 1.25
COMPONENTS = ("webhook", "controller", "labeler", "device-plugin")
EXAMPLES = ("gpu-pod.yaml", "multi-container-deployment.yaml", "sed-strategy-pod.yaml")
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity_bytes(text: str) -> float:
    for suffix, factor in UNITS.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def timed_start(kube: Kube, name: str, labelled: bool) -> float:
    """Seconds from the create call to the pod's Ready, as seen by a watch."""
    pod = gvirtus_pod(name, "bench-start")
    if not labelled:
        pod["metadata"]["labels"] = {}
    pod["spec"]["containers"][0]["command"] = ["sleep", "infinity"]
    ready = threading.Event()

    def watch() -> None:
        for _, seen in kube.client.watch(
            Pod, namespace="bench-start", fields={"metadata.name": name}
        ):
            if is_ready(seen):
                ready.set()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.2)  # the watch is open before the pod exists
    started = time.monotonic()
    kube.client.create(cast(Pod, Pod.from_dict(pod)))
    if not ready.wait(60):
        raise TimeoutError(f"pod {name} not Ready within 60 s")
    return time.monotonic() - started


def pod_start(kube: Kube, count: int) -> list[str]:
    kube.ensure_namespace("bench-start")
    series: dict[bool, list[float]] = {True: [], False: []}
    for index in range(count):
        for labelled in (True, False):
            name = f"{'gvirtus' if labelled else 'plain'}-{index}"
            series[labelled].append(timed_start(kube, name, labelled))
            kube.kubectl("delete", "pod", "-n", "bench-start", name, "--wait=false")
    rows = []
    for labelled, label in ((True, "GVirtuS pod"), (False, "same pod without the label")):
        samples = series[labelled]
        rows.append(
            info(
                f"pod start to Ready, {label} ({count} pods)",
                f"p50 {percentile(samples, 0.5):.3f} s, p99 {percentile(samples, 0.99):.3f} s",
            )
        )
    added = percentile(series[True], 0.99) - percentile(series[False], 0.99)
    rows.append(row("pod start p99 added by gate + pin", added, "s", TARGET_ADDED_P99_S))
    return rows


def flow(kube: Kube, seconds: float) -> int:
    """Rounds of the examples' pods, created, connected, deleted; the number of rounds."""
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        documents = [d for name in EXAMPLES for d in load_standin_examples(name, 4)]
        for document in documents:
            document["metadata"]["namespace"] = "bench-flow"
        kube.ensure_namespace("bench-flow")
        kube.apply(documents)
        for document in documents:
            example_pods(kube, document)
        kube.kubectl("delete", "all", "--all", "-n", "bench-flow", "--wait=true")
        rounds += 1
    return rounds


def working_set(kube: Kube, pod: Pod, container: str) -> float:
    """usage - inactive_file of the container's memory cgroup (cgroup v1), in bytes."""
    pid = kube.container_pid(pod, container)
    line = next(
        entry
        for entry in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        if entry.split(":")[1] == "memory"
    )
    cgroup = Path("/sys/fs/cgroup/memory") / line.split(":", 2)[2].lstrip("/")
    usage = int((cgroup / "memory.usage_in_bytes").read_text())
    lines = (cgroup / "memory.stat").read_text().splitlines()
    stat = {key: int(value) for key, value in (item.split() for item in lines)}
    return float(usage - stat.get("total_inactive_file", 0))


def memory(kube: Kube) -> list[str]:
    rows = []
    for component in (*COMPONENTS, "backend"):
        measured: dict[str, float] = {}
        resources: dict[str, Any] = {}
        for pod in kube.component_pods(component):
            assert pod.spec is not None
            for container in pod.spec.containers:
                used = working_set(kube, pod, container.name)
                measured[container.name] = max(measured.get(container.name, 0.0), used)
                resources[container.name] = container.resources
        for name, used in measured.items():
            limits = resources[name].limits or {}
            requests = resources[name].requests or {}
            limit = quantity_bytes(limits["memory"])
            rows.append(
                info(
                    f"{component}/{name} working set",
                    f"{used / 2**20:.1f} MiB (request {requests.get('memory')}, "
                    f"limit {limits.get('memory')})",
                )
            )
            rows.append(
                row(
                    f"{component}/{name} limit / working set",
                    limit / used,
                    "x",
                    LIMIT_HEADROOM,
                    at_least=True,
                    digits=2,
                )
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--flow-seconds", type=float, default=300.0)
    options = parser.parse_args()
    cluster = up(INSTANCE)
    try:
        chart.install(
            cluster.kubeconfig,
            {"webhook.guardPlainGpuPods": False, "devicePlugin.deviceCount": 64},
        )
        kube = Kube(cluster)
        kube.wait_release_ready()
        wait_until(lambda: len(kube.backend_pods()) == 2, "two ready backends")
        print("real nodes: chart on three nodes (one frontend, two GPU stand-ins)")
        rows = pod_start(kube, options.pods)
        for line in rows:
            print(line, flush=True)
        rounds = flow(kube, options.flow_seconds)
        print(
            info(
                "flow before the memory reading", f"{rounds} rounds in {options.flow_seconds:.0f} s"
            )
        )
        memory_rows = memory(kube)
        for line in memory_rows:
            print(line, flush=True)
        return exit_status(rows + memory_rows)
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
