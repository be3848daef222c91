"""One real Kubernetes node on this machine: containerd 2.x + runc + CNI, a kubelet, kube-proxy.

Each node lives in its own network namespace (its address on the host bridge, its pod bridge, its
iptables) and its own mount namespace, held open by a small holder process. Inside the mount
namespace the node's own directories are bound over the paths the kubelet and the CNI plugins use
whatever they are told (``/var/lib/kubelet`` with the fixed device-plugin socket directory,
``/var/log/pods``, ``/var/log/containers``, ``/var/lib/cni``, ``/run/netns``, the CDI directory),
and throw-away files over the host sysctls the kubelet writes at start. So two nodes coexist and
the host keeps its own. containerd, the kubelet and kube-proxy are started into both namespaces
with ``nsenter``; a kubelet can therefore be stopped and started again in the same node.

This machine has cgroup v1: the kubelet runs with ``failCgroupV1: false`` (since 1.35 it refuses
v1 by default) and the cgroupfs driver, under its own ``cgroupRoot``. root here lacks
``CAP_SYS_RESOURCE``, so containerd is told ``restrict_oom_score_adj`` (runc fails every
container otherwise, writing ``oom_score_adj``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.cluster.controlplane import TOOLS_BIN, ControlPlane
from tests.node.host import HostError, Instance, attach_node, create_cgroup, run

CNI_BIN = TOOLS_BIN / "cni"
CDI_DIR = "/var/run/cdi"
SANDBOX_IMAGE = "localhost/pause:dev"
CLUSTER_DOMAIN = "cluster.local"
# The paths a node binds its own directories onto (see the module docstring).
NODE_PATHS = (
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni",
    "/run/netns",
    CDI_DIR,
)
# Host-wide sysctls the kubelet sets at start; each node writes a file of its own instead.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
START_TIMEOUT = 60.0


class NodeError(Exception):
    """A node daemon exited or did not come up; the message quotes its log."""


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Node:
    """A node of ``instance`` called ``name`` (its index picks its addresses), in ``plane``."""

    instance: Instance
    name: str
    index: int
    plane: ControlPlane
    daemons: dict[str, Daemon] = field(default_factory=dict)
    holder: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root = self.instance.workdir / self.name
        self.logs = self.root / "logs"
        self.netns = self.instance.netns(self.name)
        self.ip = self.instance.node_ip(self.index)
        self.pod_cidr = self.instance.pod_cidr(self.index)
        self.cgroup_root = self.instance.cgroup_root(self.name)
        self.containerd_socket = self.root / "containerd" / "containerd.sock"

    # -- layout ---------------------------------------------------------------------------------

    def bound(self, path: str) -> Path:
        """The node's own directory behind ``path`` (what the host sees of it)."""
        return self.root / "paths" / path.strip("/").replace("/", "_")

    def start(self, images: Sequence[Path]) -> Node:
        """Join the cluster with ``images`` (archives) already in containerd: no registry here."""
        self.logs.mkdir(parents=True, exist_ok=True)
        attach_node(self.instance, self.name, self.index)
        create_cgroup(self.cgroup_root)
        self._write_identities()
        self._write_configs()
        self._start_holder()
        self.start_containerd()
        self.import_images(images)
        self.start_kubelet()
        self.start_kube_proxy()
        return self

    def stop(self) -> None:
        for daemon in reversed(list(self.daemons.values())):
            daemon.stop()
        self.daemons.clear()
        if self.holder is not None and self.holder.poll() is None:
            self.holder.kill()
            self.holder.wait()

    # -- namespaces -----------------------------------------------------------------------------

    def _start_holder(self) -> None:
        """A process that enters the node's network namespace, makes a mount namespace with the
        node's binds, and then only sleeps: the daemons join both through its PID."""
        lines = ["set -eu"]
        for path in NODE_PATHS:
            own = self.bound(path)
            own.mkdir(parents=True, exist_ok=True)
            lines += [f"mkdir -p {path}", f"mount --bind {own} {path}"]
        # Volume mounts the kubelet makes must reach the containers runc starts.
        lines.append("mount --make-rshared /var/lib/kubelet")
        sysctl_dir = self.root / "sysctls"
        sysctl_dir.mkdir(exist_ok=True)
        for name in KUBELET_SYSCTLS:
            target = Path("/proc/sys") / name
            if not target.exists():
                continue
            copy = sysctl_dir / name.replace("/", "_")
            copy.write_text(target.read_text())
            lines.append(f"mount --bind {copy} {target}")
        lines.append("exec sleep infinity")
        script = self.root / "holder.sh"
        script.write_text("\n".join(lines) + "\n")
        log = (self.logs / "holder.log").open("wb")
        self.holder = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.netns}",
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "slave",
                "--",
                "sh",
                str(script),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self._holder_ready():
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise NodeError(
                    f"node {self.name}: mount namespace holder failed:\n"
                    + (self.logs / "holder.log").read_text(errors="replace")
                )
            time.sleep(0.05)

    def _holder_ready(self) -> bool:
        """The holder has finished its binds once it runs ``sleep``."""
        assert self.holder is not None
        try:
            return Path(f"/proc/{self.holder.pid}/comm").read_text().strip() == "sleep"
        except OSError:
            return False

    def exec_args(self, *args: str) -> list[str]:
        """``args`` run inside the node's network and mount namespaces."""
        assert self.holder is not None
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--net", "--", *args]

    def run_in_node(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(*self.exec_args(*args), check=check)

    def _start(
        self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> Daemon:
        log_file = self.logs / f"{name}.log"
        with log_file.open("ab") as log:
            process = subprocess.Popen(
                self.exec_args(*args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                env={**os.environ, "PATH": f"{TOOLS_BIN}:{os.environ['PATH']}", **(env or {})},
                start_new_session=True,
            )
        daemon = Daemon(name, process, log_file)
        self.daemons[name] = daemon
        return daemon

    def _wait(self, daemon: Daemon, ready: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if not daemon.running():
                raise NodeError(
                    f"node {self.name}: {daemon.name} exited {daemon.process.returncode}\n"
                    f"--- last lines of {daemon.log_file} ---\n{daemon.log_tail()}"
                )
            if callable(ready) and ready():
                return
            if time.monotonic() > deadline:
                raise NodeError(
                    f"node {self.name}: {daemon.name} not {what} after {START_TIMEOUT:.0f}s\n"
                    f"--- last lines of {daemon.log_file} ---\n{daemon.log_tail()}"
                )
            time.sleep(0.1)

    # -- configuration --------------------------------------------------------------------------

    def _write_identities(self) -> None:
        # The kubelet authenticates as system:node:<name> (the Node authorizer's subject),
        # kube-proxy as system:kube-proxy (bound to system:node-proxier by default RBAC).
        self.kubelet_kubeconfig = self.plane.client_kubeconfig(
            f"kubelet-{self.name}", f"system:node:{self.name}", "system:nodes"
        )
        self.proxy_kubeconfig = self.plane.client_kubeconfig(
            f"kube-proxy-{self.name}", "system:kube-proxy"
        )
        self.serving_cert, self.serving_key = self.plane.serving_cert(
            f"kubelet-serving-{self.name}", self.ip, self.name
        )

    def _write_configs(self) -> None:
        cni_dir = self.root / "cni"
        cni_dir.mkdir(parents=True, exist_ok=True)
        (cni_dir / "10-bridge.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        (self.root / "containerd.toml").write_text(self._containerd_config(cni_dir))
        (self.root / "kubelet.yaml").write_text(yaml.safe_dump(self._kubelet_config()))
        (self.root / "kube-proxy.yaml").write_text(yaml.safe_dump(self._proxy_config()))

    def _cni_config(self) -> dict[str, object]:
        return {
            "cniVersion": "1.0.0",
            "name": "pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    # No masquerade: a backend must see each client pod's own address.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _containerd_config(self, cni_dir: Path) -> str:
        root = self.root / "containerd"
        return f"""version = 4
root = "{root / "root"}"
state = "{root / "state"}"

imports = []
# NRI listens on one fixed host path; nodes would fight over it, and nothing here uses it.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[plugins.'io.containerd.server.v1.grpc']
  address = "{self.containerd_socket}"

[plugins.'io.containerd.server.v1.ttrpc']
  address = "{self.containerd_socket}.ttrpc"

[plugins.'io.containerd.cri.v1.runtime']
  cdi_spec_dirs = ["{CDI_DIR}"]
  # root here lacks CAP_SYS_RESOURCE: runc may only raise a container's oom_score_adj.
  restrict_oom_score_adj = true

  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"

    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{root / "runc"}"

  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{cni_dir}"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{SANDBOX_IMAGE}"
"""

    def _kubelet_config(self) -> dict[str, object]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This machine has cgroup v1; kubelet 1.35+ refuses it unless told otherwise.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "address": self.ip,
            "healthzBindAddress": "127.0.0.1",
            "readOnlyPort": 0,
            "tlsCertFile": str(self.serving_cert),
            "tlsPrivateKeyFile": str(self.serving_key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.plane.ca_file)},
            },
            "authorization": {"mode": "AlwaysAllow"},  # only CA-signed clients get this far
            "clusterDNS": [self.instance.host_ip],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": "",  # pods get the cluster DNS only; the host's resolver is not theirs
            "failSwapOn": False,
            "evictionHard": {},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "makeIPTablesUtilChains": False,
            "podLogsDir": "/var/log/pods",
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
        }

    def _proxy_config(self) -> dict[str, object]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.proxy_kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": self.name,
            "bindAddress": self.ip,
            "clusterCIDR": self.instance.cluster_cidr,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # conntrack limits are host-wide: kube-proxy leaves them alone when these are zero.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"minSyncPeriod": "0s", "syncPeriod": "30s"},
        }

    # -- daemons --------------------------------------------------------------------------------

    def start_containerd(self) -> None:
        daemon = self._start(
            "containerd",
            [str(TOOLS_BIN / "containerd"), "--config", str(self.root / "containerd.toml")],
        )
        self._wait(daemon, lambda: self.ctr_ok(), "serving")

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            str(TOOLS_BIN / "ctr"), "--address", str(self.containerd_socket), "-n", "k8s.io", *args,
            check=check,
        )  # fmt: skip

    def ctr_ok(self) -> bool:
        try:
            return self.ctr("version", check=False).returncode == 0
        except (OSError, HostError, subprocess.TimeoutExpired):
            return False

    def import_images(self, archives: Sequence[Path]) -> None:
        for archive in archives:
            self.ctr("images", "import", str(archive))

    def start_kubelet(self) -> Daemon:
        daemon = self._start(
            "kubelet",
            [
                str(TOOLS_BIN / "kubelet"),
                f"--config={self.root / 'kubelet.yaml'}",
                f"--kubeconfig={self.kubelet_kubeconfig}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.ip}",
                "--v=1",
            ],
        )
        self._wait(daemon, lambda: self._kubelet_healthy(), "healthy")
        return daemon

    def _kubelet_healthy(self) -> bool:
        proc = self.run_in_node(
            "curl", "-sf", "--max-time", "2", "http://127.0.0.1:10248/healthz", check=False
        )
        return proc.returncode == 0 and proc.stdout == "ok"

    def stop_kubelet(self) -> None:
        daemon = self.daemons.pop("kubelet", None)
        if daemon is not None:
            daemon.stop()

    def start_kube_proxy(self) -> None:
        daemon = self._start(
            "kube-proxy",
            [str(TOOLS_BIN / "kube-proxy"), f"--config={self.root / 'kube-proxy.yaml'}", "--v=1"],
        )
        self._wait(daemon, lambda: self._proxy_synced(), "synced")

    def _proxy_synced(self) -> bool:
        proc = self.run_in_node("iptables", "-t", "nat", "-S", "KUBE-SERVICES", check=False)
        return proc.returncode == 0 and "KUBE-SVC-" in proc.stdout

    def shell(self, script: str) -> str:
        """``sh -c script`` in the node's namespaces, its output."""
        return self.run_in_node("sh", "-c", script).stdout

    def describe(self) -> str:
        return f"{self.name} ({self.ip}, pods {self.pod_cidr}, netns {self.netns})"
