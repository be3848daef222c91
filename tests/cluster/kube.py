"""The test cluster as tests use it: a control plane, its nodes, identities and pod status.

Nodes: no kubelet runs, so the fixture does a kubelet's part. Each node is created with its role
labels, then its status is patched as a kubelet reports it (Ready, capacity and allocatable, the
virtual ``nvidia.com/gpu`` slots the device plugin advertises on GPU-less frontend nodes).
Keeping nodes Ready: the controller-manager runs without its node-lifecycle controller (see
``controlplane.CONTROLLERS``), so nothing ever marks a node unreachable and no heartbeat or
Lease renewal is needed. The one trace of node lifecycle left is the TaintNodesByCondition
admission plugin's ``node.kubernetes.io/not-ready:NoSchedule`` taint on every new node, which
only node-lifecycle removes; ``add_node`` removes it once the node is Ready, as that controller
would.

Pods are scheduled (bound by kube-scheduler) but never run. ``mark_pod_running`` writes the
status a kubelet would (Running, Ready, a pod IP) through the status subresource; the
endpointslice controller then publishes the pod behind its Services. ``PodReaper`` does the one
other kubelet duty tests depend on: a deleted pod is removed once it has a deletion timestamp
(the kubelet would first stop its containers), so namespaces, Deployments and Helm releases can
be deleted.

DNS: ``dns`` is a real DNS server on loopback standing in for the cluster DNS;
``publish_service`` answers a Service's name with what CoreDNS would (its ClusterIP, or the ready
endpoint addresses of a headless Service).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Pod, Service, ServiceAccount
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from tests.cluster.controlplane import ControlPlane, binary
from tests.dnsserver import LoopbackDnsServer

FRONTEND = "gvirtus.io/frontend.allowed"
BACKEND = "gvirtus.io/backend.allowed"
GPU_PRESENT = "nvidia.com/gpu.present"
GPU = "nvidia.com/gpu"
CLUSTER_DOMAIN = "cluster.local"
DNS_TTL = 5  # CoreDNS's default for Service records
WAIT = 60.0  # generous bound for anything to happen on a loaded 2-core machine
T = TypeVar("T")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    labels: Mapping[str, str]
    gpus: int  # nvidia.com/gpu capacity: virtual slots on frontends, physical GPUs on GPU nodes
    address: str  # the node's InternalIP (a documentation range: never dialled)


# The session's nodes: two GPU-less frontends with the device plugin's 16 virtual slots, a GPU
# node opted in as a backend, a GPU node not opted in, and a node that is neither.
NODES = (
    NodeSpec("frontend-1", {FRONTEND: "true", BACKEND: "false"}, 16, "198.51.100.11"),
    NodeSpec("frontend-2", {FRONTEND: "true", BACKEND: "false"}, 16, "198.51.100.12"),
    NodeSpec(
        "gpu-backend",
        {FRONTEND: "false", BACKEND: "true", GPU_PRESENT: "true"},
        1,
        "198.51.100.21",
    ),
    NodeSpec(
        "gpu-not-opted-in",
        {FRONTEND: "false", BACKEND: "false", GPU_PRESENT: "true"},
        1,
        "198.51.100.22",
    ),
    NodeSpec("plain", {FRONTEND: "false", BACKEND: "false"}, 0, "198.51.100.31"),
)
FRONTEND_NODES = {n.name for n in NODES if n.labels.get(FRONTEND) == "true"}
BACKEND_NODES = {
    n.name for n in NODES if n.labels.get(BACKEND) == "true" and n.labels.get(GPU_PRESENT) == "true"
}
GPU_LESS_FRONTEND_NODES = {
    n.name
    for n in NODES
    if n.labels.get(FRONTEND) == "true" and n.labels.get(GPU_PRESENT) != "true"
}


def local_ipv4() -> str:
    """A non-loopback, non-link-local IPv4 address of this machine: the API server refuses
    loopback endpoints, and a webhook pod's IP must reach the local webhook process."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family != socket.AF_INET:
                continue
            ip = ipaddress.IPv4Address(address.address)
            if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
                return str(ip)
    raise RuntimeError("this machine has no non-loopback IPv4 address for webhook endpoints")


def wait_until(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll ``check`` until it returns a truthy value, and return it; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodReaper:
    """Finishes the deletion of pods that were deleted gracefully, as a kubelet does (see the
    module docstring); runs in a thread until ``stop()``.

    Plain HTTP and JSON rather than lightkube: lightkube's model decoding is not safe to run for
    the first time in two threads at once, and the tests use lightkube in the main thread.
    """

    def __init__(self, plane: ControlPlane) -> None:
        self._http = httpx.Client(
            base_url=plane.server, verify=plane.admin_tls_context(), timeout=30.0
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-reaper", daemon=True)

    def start(self) -> PodReaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=30)
        self._http.close()

    def _run(self) -> None:
        version = ""
        while not self._stopping.is_set():
            # Short watches, so that stop() is noticed within seconds.
            params = {"watch": "true", "timeoutSeconds": "2", "resourceVersion": version}
            try:
                with self._http.stream("GET", "/api/v1/pods", params=params) as stream:
                    for line in stream.iter_lines():
                        event = json.loads(line)
                        if event["type"] == "ERROR":  # 410 Gone: start from the present
                            version = ""
                            break
                        metadata = event["object"]["metadata"]
                        version = metadata["resourceVersion"]
                        if event["type"] != "DELETED" and metadata.get("deletionTimestamp"):
                            self._reap(metadata["namespace"], metadata["name"])
            except (httpx.HTTPError, ValueError, KeyError):
                self._stopping.wait(0.5)  # the API server stopping or restarting

    def _reap(self, namespace: str, name: str) -> None:
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        self._http.request("DELETE", path, json={"gracePeriodSeconds": 0})


class Cluster:
    """A started control plane with its nodes; ``client`` acts as the cluster admin."""

    def __init__(self, plane: ControlPlane, dns: LoopbackDnsServer) -> None:
        self.plane = plane
        self.dns = dns
        self.kubeconfig = plane.admin_kubeconfig
        self.client = Client(KubeConfig.from_file(self.kubeconfig), field_manager="cluster-tests")
        self.node_ip = local_ipv4()

    # -- nodes ----------------------------------------------------------------------------------

    def add_node(self, spec: NodeSpec) -> None:
        self.client.create(Node(metadata=ObjectMeta(name=spec.name, labels=dict(spec.labels))))
        resources = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        if spec.gpus:
            resources[GPU] = str(spec.gpus)
        status = {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": spec.address},
                {"type": "Hostname", "address": spec.name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": now(),
                    "lastTransitionTime": now(),
                }
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "containerd://2.0.0",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "osImage": "test",
                "kernelVersion": "6.1.0",
                "machineID": spec.name,
                "systemUUID": spec.name,
                "bootID": spec.name,
            },
        }
        self.client.patch(Node.Status, spec.name, {"status": status}, patch_type=PatchType.MERGE)
        # What node-lifecycle would do once the node reports Ready (see the module docstring).
        self.client.patch(Node, spec.name, {"spec": {"taints": None}}, patch_type=PatchType.MERGE)

    # -- identities -----------------------------------------------------------------------------

    def token(self, namespace: str, service_account: str, hours: int = 2) -> str:
        """A token for the ServiceAccount from the TokenRequest API (what the kubelet projects
        into its pods)."""
        request = ServiceAccount.Token(
            metadata=ObjectMeta(),
            spec=TokenRequestSpec(audiences=[], expirationSeconds=hours * 3600),
        )
        answer = self.client.create(request, name=service_account, namespace=namespace)
        assert answer.status is not None
        assert answer.status.token
        return answer.status.token

    def token_for(self, namespace: str, service_account: str) -> Path:
        """A kubeconfig authenticating as the ServiceAccount (a TokenRequest token)."""
        token = self.token(namespace, service_account)
        return self.plane.kubeconfig_for_token(token, f"{namespace}.{service_account}")

    def client_for(self, kubeconfig: Path) -> Client:
        return Client(KubeConfig.from_file(kubeconfig), field_manager="cluster-tests")

    # -- pods -----------------------------------------------------------------------------------

    def scheduled_node(self, namespace: str, name: str, timeout: float = WAIT) -> str:
        """The node kube-scheduler bound the pod to, waiting for the binding."""

        def bound() -> str | None:
            pod = self.client.get(Pod, name, namespace=namespace)
            return pod.spec.nodeName if pod.spec is not None else None

        return wait_until(bound, f"pod {namespace}/{name} to be scheduled", timeout)

    def mark_pod_running(self, namespace: str, name: str, ip: str) -> None:
        """Write the status a kubelet reports for a started, ready pod with IP ``ip``."""
        node = self.scheduled_node(namespace, name)
        pod = self.client.get(Pod, name, namespace=namespace)
        assert pod.spec is not None
        started = now()
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": started}
            for kind in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
        ]
        containers = [
            {
                "name": c.name,
                "image": c.image,
                "imageID": f"{c.image}@sha256:{'0' * 64}",
                "containerID": f"containerd://{name}-{c.name}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            }
            for c in pod.spec.containers
        ]
        # Nodes a test adds for itself are not in NODES: their pods report the pod IP as host IP.
        host_ip = next((s.address for s in NODES if s.name == node), ip)
        status = {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": started,
            "containerStatuses": containers,
        }
        self.client.patch(
            Pod.Status, name, {"status": status}, namespace=namespace, patch_type=PatchType.MERGE
        )

    def pods(self, namespace: str, selector: Mapping[str, str]) -> list[Pod]:
        return list(self.client.list(Pod, namespace=namespace, labels=dict(selector)))

    # -- cluster DNS ----------------------------------------------------------------------------

    def publish_service(self, namespace: str, name: str) -> list[str]:
        """Answer ``<name>.<namespace>.svc.<domain>`` as the cluster DNS would; the addresses."""
        service = self.client.get(Service, name, namespace=namespace)
        assert service.spec is not None
        if service.spec.clusterIP and service.spec.clusterIP != "None":
            addresses = [service.spec.clusterIP]
        else:
            addresses = sorted(
                address
                for endpoint_slice in self.client.list(
                    EndpointSlice,
                    namespace=namespace,
                    labels={"kubernetes.io/service-name": name},
                )
                if endpoint_slice.addressType == "IPv4"
                for endpoint in endpoint_slice.endpoints or []
                if endpoint.conditions is None or endpoint.conditions.ready is not False
                for address in endpoint.addresses
            )
        fqdn = f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"
        if addresses:
            self.dns.set_a(fqdn, *addresses, ttl=DNS_TTL)
        else:
            self.dns.set_empty(fqdn)
        return addresses

    # -- command-line tools ---------------------------------------------------------------------

    def run_tool(
        self,
        name: str,
        *args: str,
        kubeconfig: Path | None = None,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = 180.0,
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl``/``helm`` against this cluster (admin unless ``kubeconfig`` is given)."""
        tool = tool_path(name)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}
        # Helm keeps its caches and release-independent state here, never in the user's home.
        env.update(
            HELM_CACHE_HOME=str(self.plane.workdir / "helm-cache"),
            HELM_CONFIG_HOME=str(self.plane.workdir / "helm-config"),
            HELM_DATA_HOME=str(self.plane.workdir / "helm-data"),
        )
        proc = subprocess.run(
            [str(tool), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{name} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}"
            )
        return proc

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run_tool("kubectl", *args, **kwargs)

    def helm(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run_tool("helm", *args, **kwargs)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def tool_path(name: str) -> Path:
    """kubectl and helm follow the same rule as the control-plane binaries."""
    return binary(name)


def errors_of(call: Callable[[], object]) -> ApiError:
    """The ApiError ``call`` raises (AssertionError when it succeeds)."""
    try:
        call()
    except ApiError as error:
        return error
    raise AssertionError("the API server accepted the request")
