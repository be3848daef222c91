"""Labeler figures next to their targets (``make bench``).

Runs the real ``gvirtus-labeler`` process against a real kube-apiserver + etcd (the test control
plane of ``tests/cluster``; binaries from ``$KUBEBUILDER_ASSETS`` or ``make tools``). Restore
latency is the time from an operator's write that removes a role label (its answer) to the
labeler's patch putting it back, seen on a watch the benchmark opened before the write (the
original labeler polled every 60 s). Idle RSS is read after the labeler has sat watching for a
few seconds; shutdown is the time from SIGTERM to the process having exited.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import exit_status, info, resident_parts, row  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402

COMMAND = str(Path(sys.executable).parent / "gvirtus-labeler")
FRONTEND = "gvirtus.io/frontend.allowed"
TARGET_RESTORE_MEDIAN_S = 1.0
TARGET_RSS_MIB = 64.0
TARGET_SIGTERM_S = 1.0
IDLE_SECONDS = 3.0
WAIT = 60.0
MERGE_PATCH = {"content-type": "application/merge-patch+json"}


def environment(kubeconfig: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    env.update(KUBECONFIG=str(kubeconfig), GVIRTUS_KAI_HEALTH_HOST="127.0.0.1")
    env.update(GVIRTUS_KAI_HEALTH_PORT="0", GVIRTUS_KAI_LOG_LEVEL="warning")
    env.update({f"GVIRTUS_KAI_{k.upper()}": v for k, v in settings.items()})
    return env


def wait_until(check: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > WAIT:
            raise TimeoutError(f"{what}: not within {WAIT:.0f}s")
        time.sleep(0.05)
    return time.monotonic() - started


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([COMMAND, *args], env=env, stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> float:
    """SIGTERM, and the seconds until the process has exited."""
    started = time.monotonic()
    process.terminate()
    process.wait(WAIT)
    return time.monotonic() - started


class Api:
    """The admin's plain HTTP view of the API server, for the operator's writes and watches."""

    def __init__(self, plane: ControlPlane) -> None:
        self.http = httpx.Client(base_url=plane.server, verify=plane.admin_tls_context())

    def add_nodes(self, names: list[str]) -> None:
        for name in names:
            body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
            self.http.post("/api/v1/nodes", json=body).raise_for_status()

    def node(self, name: str) -> dict[str, object]:
        answer = self.http.get(f"/api/v1/nodes/{name}")
        answer.raise_for_status()
        node: dict[str, object] = answer.json()
        return node

    def labelled(self, name: str) -> bool:
        labels = self.node(name)["metadata"].get("labels") or {}  # type: ignore[attr-defined]
        return FRONTEND in labels

    def all_labelled(self, names: set[str]) -> bool:
        items = self.http.get("/api/v1/nodes").json()["items"]
        done = {i["metadata"]["name"] for i in items if FRONTEND in i["metadata"].get("labels", {})}
        return names <= done

    def restore_latency(self, name: str) -> float:
        """Remove the frontend label; the seconds until a watch shows it back."""
        version = self.node(name)["metadata"]["resourceVersion"]  # type: ignore[index]
        params = {"watch": "true", "fieldSelector": f"metadata.name={name}"}
        params["resourceVersion"] = version
        with self.http.stream("GET", "/api/v1/nodes", params=params, timeout=WAIT) as events:
            removed = {"metadata": {"labels": {FRONTEND: None}}}
            started = time.monotonic()
            self.http.patch(f"/api/v1/nodes/{name}", json=removed, headers=MERGE_PATCH)
            for line in events.iter_lines():
                labels = json.loads(line)["object"]["metadata"].get("labels", {})
                if FRONTEND in labels:
                    return time.monotonic() - started
        raise RuntimeError(f"the watch on {name} ended before the label came back")


def per_node(plane: ControlPlane, api: Api, deletions: int) -> list[str]:
    api.add_nodes(["bench-node"])
    labeler = start(env=environment(plane.admin_kubeconfig, node_name="bench-node"))
    try:
        wait_until(lambda: api.labelled("bench-node"), "the labeler labelling its node")
        time.sleep(0.5)  # its watch is open
        restores = []
        for _ in range(deletions):
            restores.append(api.restore_latency("bench-node"))
            time.sleep(0.05)  # deletions spaced out, as operators make them
        time.sleep(IDLE_SECONDS)
        rss_mib = psutil.Process(labeler.pid).memory_info().rss / 2**20
        parts = resident_parts(labeler.pid)
    finally:
        shutdown = stop(labeler)
    return [
        row(
            f"restore latency, median of {deletions}",
            statistics.median(restores),
            "s",
            TARGET_RESTORE_MEDIAN_S,
        ),
        row(f"restore latency, worst of {deletions}", max(restores), "s"),
        row("idle RSS of the labeler", rss_mib, "MiB", TARGET_RSS_MIB),
        info("idle RSS anonymous / file-backed", parts),
        row("SIGTERM to exit", shutdown, "s", TARGET_SIGTERM_S),
    ]


def all_nodes(plane: ControlPlane, api: Api, nodes: int) -> list[str]:
    names = [f"fleet-{i:05d}" for i in range(nodes)]
    api.add_nodes(names)
    started = time.monotonic()
    labeler = start("--all-nodes", env=environment(plane.admin_kubeconfig))
    try:
        wait_until(lambda: api.all_labelled(set(names)), f"the labeler labelling {nodes} nodes")
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # its watch is open
        restore = api.restore_latency(names[nodes // 2])
        rss_mib = psutil.Process(labeler.pid).memory_info().rss / 2**20
    finally:
        stop(labeler)
    return [
        row(f"--all-nodes: start and label {nodes} nodes", elapsed, "s"),
        row(f"--all-nodes: restore latency among {nodes}", restore, "s", TARGET_RESTORE_MEDIAN_S),
        row(f"--all-nodes: RSS watching {nodes} nodes", rss_mib, "MiB"),
    ]


def bench(deletions: int, nodes: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="labeler-bench-") as work:
        plane = ControlPlane(Path(work)).start()
        try:
            api = Api(plane)
            return per_node(plane, api, deletions) + all_nodes(plane, api, nodes)
        finally:
            plane.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deletions", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()
    print("labeler (real gvirtus-labeler process, real kube-apiserver + etcd on loopback)")
    rows = bench(args.deletions, args.nodes)
    print("\n".join(rows))
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
