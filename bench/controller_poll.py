"""The controller's load polling next to its target (``make bench``).

50 agent-like HTTP servers (the services' own health server with a ``/load`` route, answering
the agent's JSON with a handful of clients and two GPUs, one request per connection as the agent
does) run in a child process, each on its own loopback address. This process runs the
controller's poll path (``LoadPoller`` asking all 50 concurrently, then ``Placement.set_loads``)
every 2 s for 30 s, and its own CPU time over that span is the cost: the servers' CPU is not in
it. Also shown: the poll round's wall time (p50/max) and any poll that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gvirtus_kai_controller.loadpoll import LoadPoller  # noqa: E402
from gvirtus_kai_controller.placement import Backend, Endpoint, Placement  # noqa: E402

from bench.report import exit_status, info, percentile, row  # noqa: E402

TARGET_CPU_PERCENT = 5.0
GVIRTUS_PORT = 9999
AGENT_PORT = 19180


def address(i: int) -> str:
    return f"127.0.1.{i + 1}"


def answer(body: bytes) -> tuple[str, str, bytes]:
    return "200 OK", "application/json", body


async def serve_agents(count: int) -> None:
    """The child: ``count`` agents until stdin closes."""
    from gvirtus_kai_common.health import HealthServer

    servers = []
    for i in range(count):
        document = {
            "pod": f"gvirtus-backend-{i}",
            "listening": True,
            "port": GVIRTUS_PORT,
            "connections": 8,
            "clients": [f"10.244.{i}.{c}" for c in range(1, 5)],
            "gpus": [
                {"index": g, "utilization": 0.1 * g, "memoryUsedBytes": 1 << 30} for g in range(2)
            ],
            "gpuReadings": "nvml",
        }
        body = json.dumps(document).encode()
        server = HealthServer(
            address(i),
            AGENT_PORT,
            routes={"/load": functools.partial(answer, body)},
        )
        await server.start()
        servers.append(server)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def poll_for(count: int, seconds: float, interval: float) -> list[str]:
    backends = [Backend(address(i), GVIRTUS_PORT, agent_port=AGENT_PORT) for i in range(count)]
    placement = Placement("leastLoaded")
    placement.replace_slices({"s": [Endpoint(b.ip, True, backend=b) for b in backends]}, 0.0)
    placement.mark_synced(0.0)
    poller = LoadPoller(1.0)
    outcomes: Counter[str] = Counter()
    rounds: list[float] = []
    await poller.poll(backends)  # warm up: imports, first connections
    cpu_started = time.process_time()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        begun = time.monotonic()
        polls = await poller.poll(placement.backends)
        placement.set_loads({a: p.load for a, p in polls.items()})
        outcomes.update(p.outcome for p in polls.values())
        rounds.append(time.monotonic() - begun)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - begun)))
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    await poller.close()
    failed = sum(n for outcome, n in outcomes.items() if outcome != "ok")
    return [
        row(
            f"CPU of polling {count} agents every {interval:g} s ({wall:.0f} s)",
            100 * cpu / wall,
            "% core",
            TARGET_CPU_PERCENT,
            digits=2,
        ),
        row("poll round wall time p50", 1000 * percentile(rounds, 0.5), "ms", digits=1),
        row("poll round wall time max", 1000 * max(rounds), "ms", digits=1),
        info("polls answered / failed", f"{outcomes['ok']} / {failed} ({dict(outcomes)})"),
        # A failed poll means the figure above was not measured on real answers.
        row("failed polls", failed, "polls", 0, digits=0),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve_agents(args.serve))
        return 0
    print(f"controller load polling ({args.backends} agent HTTP servers on loopback)")
    agents = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(args.backends)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert agents.stdout is not None
        if agents.stdout.readline().strip() != b"ready":
            print("  the agent servers did not start")
            return 1
        rows = asyncio.run(poll_for(args.backends, args.seconds, args.interval))
    finally:
        if agents.stdin is not None:
            agents.stdin.close()
        agents.wait(10)
    print("\n".join(rows))
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
