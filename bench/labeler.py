"""Labeler figures next to their targets (``make bench``).

Runs the real ``gvirtus-labeler`` process against the fake Kubernetes API server of the tests,
served from this process over loopback HTTP. Restore latency is the time from an operator's write
that removes a role label to the labeler's patch putting it back, as the API server sees both
(the original labeler polled every 60 s). Idle RSS is read after the labeler has sat watching for
a few seconds; shutdown is the time from SIGTERM to the process having exited.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.kubeapi.server import FakeKubeApi  # noqa: E402

COMMAND = str(Path(sys.executable).parent / "gvirtus-labeler")
FRONTEND = "gvirtus.io/frontend.allowed"
TARGET_RESTORE_MEDIAN_S = 1.0
TARGET_RSS_MIB = 64.0
TARGET_SIGTERM_S = 1.0
IDLE_SECONDS = 3.0
WAIT = 30.0


def row(name: str, value: float, unit: str, target: float | None) -> str:
    if target is None:
        return f"  info  {name:<44} {value:>9.3f} {unit}"
    status = "PASS" if value <= target else "MISS"
    return f"  {status}  {name:<44} {value:>9.3f} {unit:<4} target <= {target:g} {unit}"


def environment(kubeconfig: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    env.update(KUBECONFIG=str(kubeconfig), GVIRTUS_KAI_HEALTH_HOST="127.0.0.1")
    env.update(GVIRTUS_KAI_HEALTH_PORT="0", GVIRTUS_KAI_LOG_LEVEL="warning")
    env.update({f"GVIRTUS_KAI_{k.upper()}": v for k, v in settings.items()})
    return env


def resident_parts(pid: int) -> str:
    """RssAnon (private: Python objects, heaps) / RssFile (mapped interpreter and native code)."""
    parts = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            parts[key] = int(value.split()[0]) / 1024
    return f"{parts['RssAnon']:.1f} / {parts['RssFile']:.1f} MiB"


async def start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        COMMAND, *args, env=env, stderr=asyncio.subprocess.DEVNULL
    )


async def stop(process: asyncio.subprocess.Process) -> float:
    """SIGTERM, and the seconds until the process has exited."""
    started = time.monotonic()
    process.terminate()
    async with asyncio.timeout(WAIT):
        await process.wait()
    return time.monotonic() - started


async def per_node(api: FakeKubeApi, kubeconfig: Path, deletions: int) -> list[str]:
    api.add_node("bench-node")
    labeler = await start(env=environment(kubeconfig, node_name="bench-node"))
    try:
        await api.wait_until(lambda: api.open_watches == 1, within=WAIT)
        restores = []
        for _ in range(deletions):
            api.remove_label("bench-node", FRONTEND)
            restores.append(
                await api.wait_until(lambda: FRONTEND in api.labels("bench-node"), within=WAIT)
            )
            await asyncio.sleep(0.05)  # deletions spaced out, as operators make them
        await asyncio.sleep(IDLE_SECONDS)
        rss_mib = psutil.Process(labeler.pid).memory_info().rss / 2**20
        parts = resident_parts(labeler.pid)
    finally:
        shutdown = await stop(labeler)
    return [
        row(
            f"restore latency, median of {deletions}",
            statistics.median(restores),
            "s",
            TARGET_RESTORE_MEDIAN_S,
        ),
        row(f"restore latency, worst of {deletions}", max(restores), "s", None),
        row("idle RSS of the labeler", rss_mib, "MiB", TARGET_RSS_MIB),
        f"  info  idle RSS anonymous / file-backed           {parts}",
        row("SIGTERM to exit", shutdown, "s", TARGET_SIGTERM_S),
    ]


async def all_nodes(api: FakeKubeApi, kubeconfig: Path, nodes: int) -> list[str]:
    names = [f"fleet-{i:05d}" for i in range(nodes)]
    for name in names:
        api.add_node(name)
    started = time.monotonic()
    labeler = await start("--all-nodes", env=environment(kubeconfig))
    try:
        await api.wait_until(
            lambda: all(FRONTEND in api.labels(name) for name in names), within=WAIT * 4
        )
        elapsed = time.monotonic() - started
        await api.wait_until(lambda: api.open_watches == 1, within=WAIT)
        api.remove_label(names[nodes // 2], FRONTEND)
        restore = await api.wait_until(
            lambda: FRONTEND in api.labels(names[nodes // 2]), within=WAIT
        )
        rss_mib = psutil.Process(labeler.pid).memory_info().rss / 2**20
    finally:
        await stop(labeler)
    return [
        row(f"--all-nodes: start and label {nodes} nodes", elapsed, "s", None),
        row(f"--all-nodes: restore latency among {nodes}", restore, "s", TARGET_RESTORE_MEDIAN_S),
        row(f"--all-nodes: RSS watching {nodes} nodes", rss_mib, "MiB", None),
    ]


async def bench(deletions: int, nodes: int) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="labeler-bench-") as work:
        async with FakeKubeApi(bookmark_interval=60.0) as api:
            kubeconfig = api.write_kubeconfig(Path(work) / "kubeconfig")
            rows += await per_node(api, kubeconfig, deletions)
        async with FakeKubeApi(bookmark_interval=60.0) as api:
            kubeconfig = api.write_kubeconfig(Path(work) / "kubeconfig")
            rows += await all_nodes(api, kubeconfig, nodes)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deletions", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()
    print("labeler (real gvirtus-labeler process, fake API server over loopback HTTP)")
    rows = asyncio.run(bench(args.deletions, args.nodes))
    print("\n".join(rows))
    return 1 if any(row.lstrip().startswith("MISS") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
