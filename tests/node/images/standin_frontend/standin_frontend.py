#!/usr/bin/python3
"""Stand-in for a program linked with the GVirtuS frontend, for the real-node tests (Python
standard library only). It reads and checks its config the way GVirtuS's frontend does and opens
one TCP connection per thread to the backend named there.

- config: ``$GVIRTUS_CONFIG``, else ``$GVIRTUS_HOME/etc/properties.json``; the name must end in
  ``.json``; a missing or unreadable file aborts (SIGABRT).
- each of N threads takes the next index k from one process-wide counter and reads
  ``communicator[k]``; a missing entry aborts the whole process.
- ``server_address`` must be a dotted-quad IPv4 address (else an error and exit 1); ``port`` must be
  a JSON string holding a port number (else abort).
- a failed connect exits 1 (EXIT_FAILURE): GVirtuS has no retry and no failover.

Once every thread is connected it prints one JSON line (``connected``, ``peers``, ``local``) and
keeps the connections open for ``STANDIN_HOLD_SECONDS`` (unset: forever; 0: exit 0 at once).

usage: gvirtus-standin-frontend [THREADS]     env: STANDIN_THREADS (default 1),
       STANDIN_HOLD_SECONDS, STANDIN_CONNECT_TIMEOUT_SECONDS (default 30)
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any, NoReturn

NAME = "gvirtus-standin-frontend"
EXIT_FAILURE = 1


def say(message: str) -> None:
    print(f"{NAME}: {message}", file=sys.stderr, flush=True)


def abort(message: str) -> NoReturn:
    """What an uncaught C++ exception does in GVirtuS: the whole process dies with SIGABRT."""
    say(f"{message}; aborting")
    os.abort()


def fail(message: str) -> NoReturn:
    """exit(EXIT_FAILURE) from any thread, as GVirtuS does on a failed connect."""
    say(message)
    sys.stdout.flush()
    os._exit(EXIT_FAILURE)


def config_path() -> str:
    path = os.environ.get("GVIRTUS_CONFIG", "")
    if not path:
        home = os.environ.get("GVIRTUS_HOME", "")
        if not home:
            abort("neither GVIRTUS_CONFIG nor GVIRTUS_HOME is set")
        path = os.path.join(home, "etc", "properties.json")
    if not path.endswith(".json"):
        abort(f"config file {path} does not end in .json")
    return path


def load_entries(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, ValueError) as error:
        abort(f"cannot read config {path}: {error}")
    entries = config.get("communicator") if isinstance(config, dict) else None
    if not isinstance(entries, list):
        abort(f"config {path} has no communicator list")
    return entries


def endpoint_of(entries: list[Any], index: int, path: str) -> tuple[str, int]:
    if index >= len(entries):
        abort(f"no communicator[{index}] in {path} for thread {index} ({len(entries)} entries)")
    entry = entries[index]
    endpoint = entry.get("endpoint") if isinstance(entry, dict) else None
    if not isinstance(endpoint, dict):
        abort(f"communicator[{index}] in {path} has no endpoint")
    address, port = endpoint.get("server_address"), endpoint.get("port")
    if not isinstance(port, str):
        abort(f"communicator[{index}].endpoint.port is {port!r}, not a JSON string")
    if not port.isdigit() or not 0 < int(port) < 65536:
        abort(f"communicator[{index}].endpoint.port {port!r} is not a port number")
    try:
        ip = ipaddress.IPv4Address(address if isinstance(address, str) else "")
    except ValueError:
        fail(
            f"communicator[{index}].endpoint.server_address {address!r} is not a dotted-quad "
            "IPv4 address (GVirtuS takes no host names and no IPv6)"
        )
    return str(ip), int(port)


class Frontend:
    def __init__(self, path: str, entries: list[Any], timeout: float) -> None:
        self.path = path
        self.entries = entries
        self.timeout = timeout
        self._next = 0  # the process-wide counter GVirtuS's endpoint factory keeps
        self._lock = threading.Lock()
        self.sockets: dict[int, socket.socket] = {}

    def thread(self) -> None:
        with self._lock:
            index = self._next
            self._next += 1
        address = endpoint_of(self.entries, index, self.path)
        try:
            conn = socket.create_connection(address, timeout=self.timeout)
        except OSError as error:
            fail(f"thread {index}: cannot connect to {address[0]}:{address[1]}: {error}")
        conn.settimeout(None)
        with self._lock:
            self.sockets[index] = conn


def positive_int(raw: str, what: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        say(f"{what} {raw!r} is not a positive number")
        sys.exit(2)
    return int(raw)


def stop(signum: int, frame: FrameType | None) -> None:
    # As PID 1 in a container, a signal without a handler would be ignored.
    os._exit(0)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threads = positive_int(
        argv[1] if len(argv) > 1 else os.environ.get("STANDIN_THREADS", "") or "1", "THREADS"
    )
    hold = os.environ.get("STANDIN_HOLD_SECONDS", "")
    timeout = float(os.environ.get("STANDIN_CONNECT_TIMEOUT_SECONDS", "") or "30")
    path = config_path()
    frontend = Frontend(path, load_entries(path), timeout)
    workers = [threading.Thread(target=frontend.thread) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    ordered = [frontend.sockets[index] for index in sorted(frontend.sockets)]
    report = {
        "connected": len(ordered),
        "config": path,
        "peers": [list(conn.getpeername()[:2]) for conn in ordered],
        "local": [list(conn.getsockname()[:2]) for conn in ordered],
    }
    print(json.dumps(report), flush=True)
    if hold:
        threading.Event().wait(float(hold))
    else:
        threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv)
