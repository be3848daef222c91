"""What the real-node tier changes on this machine, and how it takes every piece back.

One *instance* of the tier (the test session uses 0, ``make cluster`` uses 1, so both can run at
once) owns, all named after it:

- a work directory ``/tmp/gvirtus-kai/<instance>`` (control plane, node roots, logs);
- a host bridge ``gvk<instance>`` carrying the nodes' addresses, routes to the pod CIDRs through
  it, and ``net.ipv4.ip_forward`` (set to 1, restored when no instance is left);
- one network namespace per node (``gvk<instance>-<node>``): the node's kubelet, containerd,
  kube-proxy, CNI bridge and iptables chains live there, so deleting it removes all of those;
- one cgroup per node (``/gvk<instance>-<node>``, the kubelet's ``cgroupRoot``) in every v1
  hierarchy, holding every pod of the node;
- empty mount-point directories the nodes bind their own directories onto (the kubelet's fixed
  paths: ``/var/lib/kubelet``, ``/var/log/pods``, ...), inside each node's own mount namespace.

``clean(instance)`` removes all of it whatever state an interrupted run left: every process in a
node's namespace or cgroup or working in the instance's directory is killed, cgroups are removed
bottom-up, namespaces and the bridge deleted, the directory removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

CGROUP_V1 = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
BASE = Path("/tmp/gvirtus-kai")


class HostError(Exception):
    """A host command failed; the message names it and quotes its output."""


def run(*args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()
        raise HostError(f"{' '.join(args)} exited {proc.returncode}: {output}")
    return proc


def in_netns(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", netns, *args, check=check)


def read_sysctl(name: str) -> str:
    return Path("/proc/sys", name.replace(".", "/")).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", name.replace(".", "/")).write_text(value)


@dataclass(frozen=True)
class Instance:
    """Names and addresses of one instance of the tier (see the module docstring)."""

    number: int

    @property
    def prefix(self) -> str:
        return f"gvk{self.number}"

    @property
    def workdir(self) -> Path:
        return BASE / str(self.number)

    @property
    def bridge(self) -> str:
        return self.prefix

    @property
    def host_ip(self) -> str:
        """The host's address on the bridge: the API server and the cluster DNS listen here."""
        return f"172.30.{self.number}.1"

    def node_ip(self, index: int) -> str:
        return f"172.30.{self.number}.{10 + index}"

    @property
    def cluster_cidr(self) -> str:
        return f"10.{244 + self.number}.0.0/16"

    def pod_cidr(self, index: int) -> str:
        return f"10.{244 + self.number}.{index}.0/24"

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def cgroup_root(self, node: str) -> str:
        return f"/{self.prefix}-{node}"


# -- the host bridge ------------------------------------------------------------------------------


def create_bridge(instance: Instance) -> None:
    run("ip", "link", "add", instance.bridge, "type", "bridge")
    run("ip", "addr", "add", f"{instance.host_ip}/24", "dev", instance.bridge)
    run("ip", "link", "set", instance.bridge, "up")
    # Nodes reach each other's pods and the host through the host: it routes between the bridge's
    # ports, so it forwards. The value found first is kept, to be restored by the last clean().
    saved = BASE / "ip_forward"
    if not saved.exists():
        BASE.mkdir(parents=True, exist_ok=True)
        saved.write_text(read_sysctl("net.ipv4.ip_forward"))
    write_sysctl("net.ipv4.ip_forward", "1")


def attach_node(instance: Instance, node: str, index: int) -> None:
    """A network namespace for the node, a veth into it from the host bridge with the node's
    address, and a route from the host to the node's pod CIDR."""
    netns = instance.netns(node)
    run("ip", "netns", "add", netns)
    host_end, node_end = f"{instance.prefix}h{index}", f"{instance.prefix}n{index}"
    run("ip", "link", "add", host_end, "type", "veth", "peer", "name", node_end)
    run("ip", "link", "set", host_end, "master", instance.bridge, "up")
    run("ip", "link", "set", node_end, "netns", netns)
    in_netns(netns, "ip", "link", "set", "lo", "up")
    in_netns(netns, "ip", "link", "set", node_end, "name", "eth0")
    in_netns(netns, "ip", "addr", "add", f"{instance.node_ip(index)}/24", "dev", "eth0")
    in_netns(netns, "ip", "link", "set", "eth0", "up")
    in_netns(netns, "ip", "route", "add", "default", "via", instance.host_ip)
    run("ip", "route", "add", instance.pod_cidr(index), "via", instance.node_ip(index))
    # Per-namespace settings a node needs: it routes between its pod bridge and eth0, and
    # bridged pod-to-pod traffic passes iptables so that kube-proxy's Service NAT is undone.
    for name in ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables"):
        in_netns(netns, "sysctl", "-q", "-w", f"{name}=1")


# -- cgroups --------------------------------------------------------------------------------------


def hierarchies() -> list[Path]:
    """The mounted cgroup v1 hierarchies (``unified`` holds no controller here)."""
    return [
        path
        for path in sorted(CGROUP_V1.iterdir())
        if path.is_dir() and path.name != "unified" and (path / "cgroup.procs").exists()
    ]


def create_cgroup(name: str) -> None:
    """``name`` in every hierarchy; cpuset needs its cpus and mems set before tasks can join."""
    for hierarchy in hierarchies():
        path = hierarchy / name.lstrip("/")
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for key in ("cpuset.cpus", "cpuset.mems"):
                (path / key).write_text((hierarchy / key).read_text())


def _cgroup_dirs(name: str) -> Iterator[Path]:
    """Every directory below (and including) ``name``, deepest first, in every hierarchy."""
    for hierarchy in hierarchies():
        top = hierarchy / name.lstrip("/")
        if top.is_dir():
            yield from sorted(top.rglob("*/"), key=lambda p: len(p.parts), reverse=True)
            yield top


def _cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for directory in _cgroup_dirs(name):
        with contextlib.suppress(OSError):
            pids.update(int(pid) for pid in (directory / "cgroup.procs").read_text().split())
    return pids


def remove_cgroup(name: str) -> None:
    for directory in _cgroup_dirs(name):
        with contextlib.suppress(OSError):
            directory.rmdir()


# -- processes ------------------------------------------------------------------------------------


def _processes() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _netns_inode(path: Path) -> int | None:
    with contextlib.suppress(OSError):
        return path.stat().st_ino
    return None


def pids_of(instance: Instance, nodes: Iterable[str]) -> set[int]:
    """Every process of the instance: in a node's network namespace or cgroup, or with its
    working directory or executable arguments inside the instance's directory."""
    inodes = {
        inode
        for node in nodes
        if (inode := _netns_inode(NETNS_DIR / instance.netns(node))) is not None
    }
    workdir = str(instance.workdir)
    found: set[int] = set()
    for pid in _processes():
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if inodes and os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
                found.add(pid)
                continue
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if cwd == workdir or cwd.startswith(workdir + "/"):
                found.add(pid)
                continue
            if workdir + "/" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                found.add(pid)
    for node in nodes:
        found |= _cgroup_pids(instance.cgroup_root(node))
    found.discard(os.getpid())
    return found


def kill_all(pids: set[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.05)


# -- the whole instance ---------------------------------------------------------------------------


def node_names(instance: Instance) -> list[str]:
    """Nodes an earlier run of the instance left: from its namespaces and its cgroups."""
    names = set()
    prefix = instance.prefix + "-"
    if NETNS_DIR.is_dir():
        names |= {p.name[len(prefix) :] for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)}
    for hierarchy in hierarchies():
        names |= {p.name[len(prefix) :] for p in hierarchy.iterdir() if p.name.startswith(prefix)}
    return sorted(names)


def clean(instance: Instance) -> None:
    """Remove everything the instance may have left on this machine (see the module docstring)."""
    nodes = node_names(instance)
    # Twice: a container runtime killed first may have started a process in between.
    for _ in range(2):
        kill_all(pids_of(instance, nodes))
    for node in nodes:
        remove_cgroup(instance.cgroup_root(node))
        run("ip", "netns", "delete", instance.netns(node), check=False)
    run("ip", "link", "delete", instance.bridge, check=False)
    # Mounts live in the nodes' own mount namespaces, gone with their processes; a mount left in
    # the host's namespace by hand would make rmtree fail loudly rather than delete through it.
    if instance.workdir.exists():
        mounts = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(instance.workdir))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            run("umount", "-l", mount, check=False)
        shutil.rmtree(instance.workdir, ignore_errors=True)
    saved = BASE / "ip_forward"
    if saved.exists() and not any(
        p.name.startswith("gvk") for p in Path("/sys/class/net").iterdir()
    ):
        write_sysctl("net.ipv4.ip_forward", saved.read_text().strip())
        saved.unlink()
