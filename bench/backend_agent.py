"""Backend agent figures next to their targets (``make bench``).

Runs the real ``gvirtus-backend-agent`` process against a listener on 127.0.0.1 standing in for
GVirtuS, with 1,000 real loopback connections established to it: the agent reads this machine's
socket tables, which then hold both ends of each connection (twice what a backend pod's tables
hold), every second in a worker thread. Latency is one ``/load`` answer as a client sees it, from
connect to the last byte, each request on a new connection as the controller's polls are; RSS is
read after the requests; CPU is what the agent spends reading the tables while nobody asks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import exit_status, info, percentile, resident_parts, row  # noqa: E402

COMMAND = str(Path(sys.executable).parent / "gvirtus-backend-agent")
TARGET_RSS_MIB = 40.0
TARGET_LOAD_P99_MS = 5.0
WAIT = 20.0
IDLE_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_descriptor_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"{path}: {head[:80]!r}")
    return body


def start_agent(gvirtus_port: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    env.update(
        GVIRTUS_KAI_HEALTH_HOST="127.0.0.1",
        GVIRTUS_KAI_HEALTH_PORT=str(port),
        GVIRTUS_KAI_GVIRTUS_PORT=str(gvirtus_port),
        GVIRTUS_KAI_POD_NAME="bench-backend",
        GVIRTUS_KAI_LOG_LEVEL="warning",
    )
    agent = subprocess.Popen([COMMAND], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + WAIT
    while True:
        try:
            get(port, "/healthz")
            return agent, port
        except OSError:
            if agent.poll() is not None or time.monotonic() > deadline:
                agent.kill()
                raise RuntimeError("the agent did not start") from None
            time.sleep(0.05)


def bench(connections: int, requests: int) -> list[str]:
    raise_descriptor_limit(2 * connections + 256)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)
    gvirtus_port = listener.getsockname()[1]
    clients: list[socket.socket] = []
    accepted: list[socket.socket] = []
    try:
        for _ in range(connections):
            clients.append(socket.create_connection(("127.0.0.1", gvirtus_port)))
            accepted.append(listener.accept()[0])
        agent, port = start_agent(gvirtus_port)
        try:
            load = json.loads(get(port, "/load"))
            if load["connections"] != connections:
                raise RuntimeError(f"/load counted {load['connections']} of {connections}")
            for _ in range(20):  # warm-up
                get(port, "/load")
            latencies = []
            for _ in range(requests):
                started = time.perf_counter()
                get(port, "/load")
                latencies.append((time.perf_counter() - started) * 1000)
            process = psutil.Process(agent.pid)
            rss_mib = process.memory_info().rss / 2**20
            parts = resident_parts(agent.pid)
            before = process.cpu_times()
            time.sleep(IDLE_SECONDS)
            after = process.cpu_times()
            busy = (after.user + after.system - before.user - before.system) / IDLE_SECONDS
        finally:
            agent.terminate()
            agent.wait(WAIT)
    finally:
        for sock in clients + accepted + [listener]:
            sock.close()
    return [
        row(f"/load p50, {connections} connections established", percentile(latencies, 0.5), "ms"),
        row(
            f"/load p99, {connections} connections established",
            percentile(latencies, 0.99),
            "ms",
            TARGET_LOAD_P99_MS,
        ),
        row("RSS of the agent after the requests", rss_mib, "MiB", TARGET_RSS_MIB),
        info("RSS anonymous / file-backed", parts),
        row("CPU while idle (a reading a second), % of one core", busy * 100, "%", digits=2),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    print("backend agent (real gvirtus-backend-agent process, real loopback connections)")
    rows = bench(args.connections, args.requests)
    print("\n".join(rows))
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
