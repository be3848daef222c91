"""A real Kubernetes cluster on this machine: the control plane of ``tests/cluster`` plus two real
nodes (``node.Node``), a cluster DNS and the project's images in each node's containerd.

- ``gvirtus-frontend``: a GPU-less node. The labeler makes it a frontend; the device plugin runs
  here and GVirtuS application pods land here.
- ``gvirtus-gpu-a`` and ``gvirtus-gpu-b``: stand for GPU nodes, two so that placement has a
  choice. Each is labelled as the NVIDIA GPU Operator labels one (``nvidia.com/gpu.present=true``)
  and opted in as a backend (``gvirtus.io/backend.allowed=true``) as an administrator would; its
  one ``nvidia.com/gpu`` is advertised through the node's status, the way an extended resource
  without a device plugin is (this machine has no GPU).

The test session (``tests/node/conftest.py``) and ``make cluster`` both call ``up``; ``down``
removes everything (``host.clean``). Run as a process::

    python -m tests.node.cluster up [--instance N] [--install]  # prints export KUBECONFIG=...
    python -m tests.node.cluster down [--instance N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Node as NodeObject
from lightkube.types import PatchType

from tests.cluster.controlplane import ROOT, ControlPlane
from tests.node import chart, host
from tests.node.node import Node

FRONTEND_NODE = "gvirtus-frontend"
GPU_NODES = ("gvirtus-gpu-a", "gvirtus-gpu-b")
NODE_NAMES = (FRONTEND_NODE, *GPU_NODES)
IMAGES = ROOT / ".tools" / "images"
IMAGE_NAMES = (
    "pause",
    "webhook",
    "controller",
    "labeler",
    "device-plugin",
    "backend-agent",
    "standin-backend",
    "standin-frontend",
)
GPU_NODE_LABELS = {"nvidia.com/gpu.present": "true", "gvirtus.io/backend.allowed": "true"}
READY_TIMEOUT = 120.0


def image_archives() -> list[Path]:
    archives = [IMAGES / f"{name}.tar" for name in IMAGE_NAMES]
    missing = [str(a) for a in archives if not a.is_file()]
    if missing:
        raise FileNotFoundError(f"image archives missing (run `make images`): {', '.join(missing)}")
    return archives


@dataclass
class NodeCluster:
    instance: host.Instance
    plane: ControlPlane
    nodes: dict[str, Node]
    dns: subprocess.Popen[bytes]

    @property
    def kubeconfig(self) -> Path:
        return self.plane.admin_kubeconfig

    def client(self) -> Client:
        return Client(KubeConfig.from_file(self.kubeconfig), field_manager="node-tier")

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.dns.kill()
        self.plane.stop()
        host.clean(self.instance)


def up(number: int = 0, persistent: bool = False, backends: bool = True) -> NodeCluster:
    """Start (after removing whatever an earlier run of the instance left) and wait until every
    node is Ready. ``persistent``: the processes outlive this one (``make cluster``).
    ``backends`` False leaves the GPU nodes as plain nodes (no GPU, not opted in)."""
    archives = image_archives()
    instance = host.Instance(number)
    host.clean(instance)
    instance.workdir.mkdir(parents=True)
    host.create_bridge(instance)
    plane = ControlPlane(instance.workdir / "control-plane", instance.host_ip, real_nodes=True)
    plane.start(stop_at_exit=not persistent)
    dns_log = (instance.workdir / "cluster-dns.log").open("wb")
    dns = subprocess.Popen(
        [
            sys.executable, "-m", "tests.node.clusterdns",
            "--kubeconfig", str(plane.admin_kubeconfig),
            "--listen", f"{instance.host_ip}:53",
        ],
        stdout=dns_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    nodes = {
        name: Node(instance, name, index, plane) for index, name in enumerate(NODE_NAMES, start=1)
    }
    cluster = NodeCluster(instance, plane, nodes, dns)
    try:
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            list(pool.map(lambda node: node.start(archives), nodes.values()))
        wait_ready(cluster, NODE_NAMES)
        for name in GPU_NODES if backends else ():
            prepare_gpu_node(cluster.client(), name)
    except BaseException:
        if not persistent:
            cluster.stop()
        raise
    return cluster


def node_ready(node: NodeObject) -> bool:
    conditions = node.status.conditions if node.status else None
    return any(c.type == "Ready" and c.status == "True" for c in conditions or [])


def wait_ready(
    cluster: NodeCluster, names: tuple[str, ...], timeout: float = READY_TIMEOUT
) -> None:
    """Every node in ``names`` reports Ready (its kubelet says so) and carries no taint."""
    client = cluster.client()
    deadline = time.monotonic() + timeout
    while True:
        ready = {
            n.metadata.name
            for n in client.list(NodeObject)
            if n.metadata is not None and node_ready(n) and not (n.spec and n.spec.taints)
        }
        if set(names) <= ready:
            return
        if time.monotonic() > deadline:
            logs = "\n".join(
                f"--- {node.name} kubelet ---\n{node.daemons['kubelet'].log_tail(15)}"
                for node in cluster.nodes.values()
                if "kubelet" in node.daemons
            )
            raise TimeoutError(f"nodes not Ready and untainted: {set(names) - ready}\n{logs}")
        time.sleep(0.2)


def prepare_gpu_node(client: Client, name: str) -> None:
    """What the GPU Operator and an administrator do to a GPU node (see the module docstring)."""
    client.patch(
        NodeObject, name, {"metadata": {"labels": GPU_NODE_LABELS}}, patch_type=PatchType.MERGE
    )
    gpu = {"nvidia.com/gpu": "1"}
    client.patch(
        NodeObject.Status,
        name,
        {"status": {"capacity": gpu, "allocatable": gpu}},
        patch_type=PatchType.MERGE,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--instance", type=int, default=1)
    parser.add_argument("--install", action="store_true", help="install the chart (local images)")
    options = parser.parse_args()
    if options.action == "down":
        host.clean(host.Instance(options.instance))
        print("cluster removed")
        return
    cluster = up(options.instance, persistent=True)
    for node in cluster.nodes.values():
        print(f"node {node.describe()}")
    if options.install:
        chart.install(cluster.kubeconfig)
        print(f"chart installed: release {chart.RELEASE} in namespace {chart.NAMESPACE}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")


if __name__ == "__main__":
    main()
