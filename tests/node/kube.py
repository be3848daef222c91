"""The real-node cluster as tests use it: the API (lightkube), kubectl, waiting, and a look into the
nodes (a container's process, a node's files) for what only the node can show."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.core_v1 import Namespace, Node, Pod

from tests.cluster.controlplane import ROOT, TOOLS_BIN
from tests.cluster.kube import wait_until as cluster_wait_until
from tests.node.chart import NAMESPACE
from tests.node.cluster import FRONTEND_NODE, GPU_NODES, NodeCluster
from tests.node.node import Node as RealNode

T = TypeVar("T")
WAIT = 120.0  # pods start in about a second; a loaded 2-core machine needs a margin
STANDIN_FRONTEND = "localhost/gvirtus-kai-standin-frontend:dev"
STANDIN_STATUS_PORT = 9998
EXAMPLES = ROOT / "examples"


def wait_until(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """The cluster tier's wait, with this tier's longer default."""
    return cluster_wait_until(check, what, timeout)


class Kube:
    def __init__(self, cluster: NodeCluster) -> None:
        self.cluster = cluster
        self.kubeconfig = cluster.kubeconfig
        self.client: Client = cluster.client()

    @property
    def frontend(self) -> RealNode:
        return self.cluster.nodes[FRONTEND_NODE]

    @property
    def gpu_nodes(self) -> list[RealNode]:
        return [self.cluster.nodes[name] for name in GPU_NODES]

    # -- tools ----------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(TOOLS_BIN / "kubectl"), *args],
            input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
            )
        return proc

    def apply(self, documents: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents))

    def ensure_namespace(self, name: str) -> None:
        try:
            self.client.get(Namespace, name)
        except ApiError:
            self.kubectl("create", "namespace", name)

    # -- release --------------------------------------------------------------------------------

    def wait_release_ready(self, timeout: float = WAIT) -> None:
        def ready() -> bool:
            for ds in self.client.list(DaemonSet, namespace=NAMESPACE):
                s = ds.status
                if s is None or s.numberReady != s.desiredNumberScheduled:
                    return False
                if (s.updatedNumberScheduled or 0) != s.desiredNumberScheduled:
                    return False
            for deployment in self.client.list(Deployment, namespace=NAMESPACE):
                d = deployment.status
                wanted = deployment.spec.replicas if deployment.spec else 1
                if (
                    d is None
                    or (d.readyReplicas or 0) != wanted
                    or (d.updatedReplicas or 0) != wanted
                ):
                    return False
            return True

        wait_until(ready, "every workload of the release to be ready", timeout)

    def component_pods(self, component: str) -> list[Pod]:
        return list(
            self.client.list(
                Pod, namespace=NAMESPACE, labels={"app.kubernetes.io/component": component}
            )
        )

    # -- pods -----------------------------------------------------------------------------------

    def pod(self, namespace: str, name: str) -> Pod:
        return self.client.get(Pod, name, namespace=namespace)

    def wait_pod(
        self,
        namespace: str,
        name: str,
        check: Callable[[Pod], bool],
        what: str,
        timeout: float = WAIT,
    ) -> Pod:
        def matched() -> Pod | None:
            try:
                pod = self.pod(namespace, name)
            except ApiError:
                return None
            return pod if check(pod) else None

        return wait_until(matched, f"pod {namespace}/{name} {what}", timeout)

    def wait_running(self, namespace: str, name: str, timeout: float = WAIT) -> Pod:
        return self.wait_pod(namespace, name, is_ready, "to run and be Ready", timeout)

    def logs(
        self, namespace: str, name: str, container: str | None = None, check: bool = True
    ) -> str:
        """The container's log; with ``check`` False, empty while its kubelet cannot be asked."""
        args = ["logs", "-n", namespace, name] + (["-c", container] if container else [])
        return self.kubectl(*args, check=check).stdout

    def exec(self, namespace: str, name: str, container: str, *command: str) -> str:
        return self.kubectl("exec", "-n", namespace, name, "-c", container, "--", *command).stdout

    def remove_gvirtus_workloads(self) -> None:
        """Delete every GVirtuS application pod, with what owns it (so nothing re-creates it),
        in every namespace but the release's, and wait until they are gone."""

        def gvirtus_pods() -> list[Pod]:
            return [
                p
                for p in self.client.list(Pod, namespace="*", labels={"gvirtus.io/enabled": "true"})
                if p.metadata is not None and p.metadata.namespace != NAMESPACE
            ]

        for namespace in {p.metadata.namespace or "" for p in gvirtus_pods() if p.metadata}:
            self.kubectl(
                "delete", "deployments,replicasets,jobs,pods", "--all", "-n", namespace,
                "--grace-period=1", "--wait=false",
            )  # fmt: skip
        wait_until(lambda: not gvirtus_pods(), "every GVirtuS application pod to be gone")

    def node_of(self, pod: Pod) -> RealNode:
        assert pod.spec is not None, "pod without a spec"
        assert pod.spec.nodeName, "pod not scheduled"
        return self.cluster.nodes[pod.spec.nodeName]

    def container_pid(self, pod: Pod, container: str) -> int:
        """The host PID of ``container``'s first process, from its node's containerd."""
        assert pod.status is not None
        status = next(s for s in pod.status.containerStatuses or [] if s.name == container)
        assert status.containerID, f"{container} has no container ID yet"
        container_id = status.containerID.split("://", 1)[1]
        tasks = self.node_of(pod).ctr("tasks", "ls").stdout.splitlines()
        for line in tasks[1:]:
            fields = line.split()
            if fields and fields[0] == container_id:
                return int(fields[1])
        raise AssertionError(f"no task of container {container_id} on {self.node_of(pod).name}")

    def node_object(self, name: str) -> Node:
        return self.client.get(Node, name)

    def allocatable(self, node: str, resource: str) -> str | None:
        status = self.node_object(node).status
        return (status.allocatable or {}).get(resource) if status else None

    # -- the stand-in backend -------------------------------------------------------------------

    def backend_connections(self, backend_ip: str) -> list[dict[str, Any]]:
        """Every connection the stand-in backend at ``backend_ip`` accepted, as it reports them
        (the host reaches pod IPs through its routes to the nodes)."""
        answer = httpx.get(f"http://{backend_ip}:{STANDIN_STATUS_PORT}/connections", timeout=5.0)
        answer.raise_for_status()
        connections: list[dict[str, Any]] = answer.json()
        return connections

    def backend_pods(self) -> list[Pod]:
        return [p for p in self.component_pods("backend") if is_ready(p)]


def is_ready(pod: Pod) -> bool:
    status = pod.status
    if status is None or status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


def load_example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def read_json(text: str) -> Any:
    return json.loads(text)


def proc_status(pid: int) -> Mapping[str, str]:
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def root_mount_options(pid: int) -> list[str]:
    """Mount options of the container's root filesystem, as its process sees it."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"process {pid} has no root mount")
