"""An interrupted run leaves processes, namespaces, a bridge, cgroups and files behind; the next
start removes all of it (``host.clean``) before it builds anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.node import host

LEFTOVER = host.Instance(9)  # an instance no other run of the tier uses
NODE = "leftover"


def leave_an_interrupted_node() -> subprocess.Popen[bytes]:
    """What a run killed with SIGKILL half-way leaves: its bridge, a node namespace with a
    process in it, a node cgroup holding that process, a mount namespace with a bind inside the
    work directory, and the work directory."""
    host.clean(LEFTOVER)
    LEFTOVER.workdir.mkdir(parents=True)
    host.create_bridge(LEFTOVER)
    host.attach_node(LEFTOVER, NODE, 1)
    host.create_cgroup(LEFTOVER.cgroup_root(NODE))
    (LEFTOVER.workdir / "bound").mkdir()
    script = (
        f"mount --bind {LEFTOVER.workdir / 'bound'} {LEFTOVER.workdir / 'bound'}; "
        "exec sleep infinity"
    )
    process = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{LEFTOVER.netns(NODE)}", "--",
         "unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", script],
        start_new_session=True,
    )  # fmt: skip
    for hierarchy in host.hierarchies():
        (hierarchy / LEFTOVER.cgroup_root(NODE).lstrip("/") / "cgroup.procs").write_text(
            str(process.pid)
        )
    return process


def test_clean_removes_everything_an_interrupted_run_left() -> None:
    ip_forward = host.read_sysctl("net.ipv4.ip_forward")
    process = leave_an_interrupted_node()
    assert Path(f"/run/netns/{LEFTOVER.netns(NODE)}").exists()
    assert host.node_names(LEFTOVER) == [NODE]

    host.clean(LEFTOVER)

    assert process.wait(timeout=10) == -9
    assert not Path(f"/run/netns/{LEFTOVER.netns(NODE)}").exists()
    assert not Path(f"/sys/class/net/{LEFTOVER.bridge}").exists()
    for hierarchy in host.hierarchies():
        assert not (hierarchy / LEFTOVER.cgroup_root(NODE).lstrip("/")).exists(), hierarchy
    assert not LEFTOVER.workdir.exists()
    assert host.node_names(LEFTOVER) == []
    if not any(p.name.startswith("gvk") for p in Path("/sys/class/net").iterdir()):
        assert host.read_sysctl("net.ipv4.ip_forward") == ip_forward


def test_clean_of_an_instance_that_never_ran_changes_nothing() -> None:
    host.clean(LEFTOVER)
    host.clean(LEFTOVER)
    assert not LEFTOVER.workdir.exists()
