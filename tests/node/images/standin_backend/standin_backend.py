#!/usr/bin/python3
"""Stand-in for the GVirtuS backend daemon in the real-node tests (Python standard library only).

Like GVirtuS it listens on INADDR_ANY (and, when the host has it, on the IPv6 wildcard too) with a
small backlog, and keeps every accepted connection open, reading and discarding what arrives. For
the tests it records each connection (peer, local end, accept time, still open or not), answers
``GET /connections`` (JSON list) and ``GET /healthz`` on a second port, and prints one JSON line per
accepted connection on stdout.

env: STANDIN_PORT (GVirtuS port, default 9999), STANDIN_STATUS_PORT (default 9998)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

BACKLOG = 5  # what GVirtuS passes to listen()


class Connections:
    """Every accepted connection, in accept order; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []

    def accepted(self, peer: tuple[str, int], local: tuple[str, int]) -> int:
        record: dict[str, Any] = {
            "peer": [peer[0], peer[1]],
            "local": [local[0], local[1]],
            "accepted_at": time.time(),
            "open": True,
            "closed_at": None,
            "bytes_received": 0,
        }
        with self._lock:
            self._records.append(record)
            return len(self._records) - 1

    def received(self, index: int, count: int) -> None:
        with self._lock:
            self._records[index]["bytes_received"] += count

    def closed(self, index: int) -> None:
        with self._lock:
            self._records[index].update(open=False, closed_at=time.time())

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(record) for record in self._records]


def env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "") or str(default)
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        print(f"gvirtus-standin-backend: {name}={raw!r} is not a TCP port", file=sys.stderr)
        sys.exit(2)
    return port


def plain_address(address: tuple[Any, ...]) -> tuple[str, int]:
    host = str(address[0])
    return host.removeprefix("::ffff:"), int(address[1])


def listeners(port: int) -> list[socket.socket]:
    """The IPv4 wildcard always; the IPv6 wildcard (v6 only) where the host supports it."""
    ipv4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ipv4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ipv4.bind(("0.0.0.0", port))
    ipv4.listen(BACKLOG)
    found = [ipv4]
    if socket.has_ipv6:
        try:
            ipv6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            ipv6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ipv6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            ipv6.bind(("::", port))
            ipv6.listen(BACKLOG)
        except OSError:
            ipv6.close()  # no IPv6 in this network namespace: IPv4 is what GVirtuS uses anyway
        else:
            found.append(ipv6)
    return found


def serve_connection(conn: socket.socket, index: int, connections: Connections) -> None:
    with conn:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                break
            if not data:
                break
            connections.received(index, len(data))
    connections.closed(index)


def accept_forever(listener: socket.socket, connections: Connections) -> None:
    while True:
        conn, address = listener.accept()
        peer = plain_address(address)
        local = plain_address(conn.getsockname())
        index = connections.accepted(peer, local)
        line = {"event": "accepted", "peer": list(peer), "local": list(local), "time": time.time()}
        print(json.dumps(line), flush=True)
        # One thread per connection, as GVirtuS does.
        threading.Thread(
            target=serve_connection, args=(conn, index, connections), daemon=True
        ).start()


def status_server(port: int, connections: Connections) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/connections":
                self.reply(200, json.dumps(connections.snapshot()).encode(), "application/json")
            elif self.path == "/healthz":
                self.reply(200, b"ok\n", "text/plain")
            else:
                self.reply(404, b"not found\n", "text/plain")

        def reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # stdout carries only the connection lines; probes would flood stderr

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    return server


def stop(signum: int, frame: FrameType | None) -> None:
    # As PID 1 in a container, a signal without a handler would be ignored. Exit at once: an
    # orderly shutdown could wait on a connection thread that holds the stdout lock.
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    port = env_port("STANDIN_PORT", 9999)
    status_port = env_port("STANDIN_STATUS_PORT", 9998)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    connections = Connections()
    status = status_server(status_port, connections)
    sockets = listeners(port)
    for listener in sockets:
        threading.Thread(target=accept_forever, args=(listener, connections), daemon=True).start()
    families = ["ipv6" if s.family == socket.AF_INET6 else "ipv4" for s in sockets]
    ready = {"event": "listening", "port": port, "status_port": status_port, "families": families}
    print(json.dumps(ready), file=sys.stderr, flush=True)
    status.serve_forever()


if __name__ == "__main__":
    main()
