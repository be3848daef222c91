"""The stand-ins for GVirtuS that the real-node images run, as processes on 127.0.0.1.

The frontend must fail where GVirtuS's frontend fails (abort on a missing entry or a numeric port,
exit 1 on a host name, an IPv6 address or a refused connect) and connect where it connects; the
backend must record what reached it. No image and no cluster is needed here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ci.buildfiles import parse_dockerfile
from tests.node.workloads import STANDIN_COMMAND, STANDIN_HOME

IMAGES = Path(__file__).parent / "images"
FRONTEND = IMAGES / "standin_frontend" / "standin_frontend.py"
BACKEND = IMAGES / "standin_backend" / "standin_backend.py"
SHIPPED_HOME = IMAGES / "standin_frontend" / "gvirtus"
SIGABRT_RETURNCODE = -signal.SIGABRT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def entry(address: str, port: object) -> dict[str, Any]:
    endpoint = {"suite": "tcp/ip", "protocol": "tcp", "server_address": address, "port": port}
    return {"endpoint": endpoint, "plugins": ["cudart"]}


def write_config(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"communicator": entries, "secure_application": False}))
    return path


def run_frontend(
    config: Path | None, *args: str, timeout: float = 30.0, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("GVIRTUS", "STANDIN"))}
    environment.update({"STANDIN_HOLD_SECONDS": "0", "STANDIN_CONNECT_TIMEOUT_SECONDS": "5"})
    if config is not None:
        environment["GVIRTUS_CONFIG"] = str(config)
    environment.update(env)
    return subprocess.run(
        [sys.executable, str(FRONTEND), *args],
        env=environment, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    """Four listening sockets on 127.0.0.1 standing in for four backends."""
    sockets = []
    for _ in range(4):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(5)
        sockets.append(listener)
    yield sockets
    for listener in sockets:
        listener.close()


def port_of(listener: socket.socket) -> str:
    return str(listener.getsockname()[1])


def accepted_count(listener: socket.socket) -> int:
    """Connections queued on ``listener`` (the frontend may have exited since: still counted)."""
    count = 0
    listener.settimeout(0.2)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return count
        conn.close()
        count += 1


# -- frontend: connecting ----------------------------------------------------------------------


def test_frontend_with_one_thread_connects_once_to_a_one_entry_config(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    config = write_config(tmp_path / "p.json", [entry("127.0.0.1", port_of(listeners[0]))])

    got = report(run_frontend(config))

    assert got["connected"] == 1
    assert got["peers"] == [["127.0.0.1", int(port_of(listeners[0]))]]
    assert accepted_count(listeners[0]) == 1


def test_frontend_with_one_thread_uses_only_the_first_entry_of_four(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    entries = [entry("127.0.0.1", port_of(listener)) for listener in listeners]
    config = write_config(tmp_path / "p.json", entries)

    got = report(run_frontend(config))

    assert got["connected"] == 1
    assert [accepted_count(listener) for listener in listeners] == [1, 0, 0, 0]


def test_frontend_threads_each_take_the_next_entry_of_four(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    entries = [entry("127.0.0.1", port_of(listener)) for listener in listeners]
    config = write_config(tmp_path / "p.json", entries)

    got = report(run_frontend(config, STANDIN_THREADS="4"))

    assert got["connected"] == 4
    assert sorted(peer[1] for peer in got["peers"]) == sorted(int(port_of(s)) for s in listeners)
    assert len({tuple(local) for local in got["local"]}) == 4
    assert [accepted_count(listener) for listener in listeners] == [1, 1, 1, 1]


def test_frontend_thread_count_on_the_command_line_wins_over_the_environment(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    entries = [entry("127.0.0.1", port_of(listeners[0]))] * 2
    config = write_config(tmp_path / "p.json", entries)

    got = report(run_frontend(config, "2", STANDIN_THREADS="4"))

    assert got["connected"] == 2
    assert accepted_count(listeners[0]) == 2


def test_frontend_with_more_threads_than_entries_aborts_naming_the_missing_index(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    config = write_config(tmp_path / "p.json", [entry("127.0.0.1", port_of(listeners[0]))])

    proc = run_frontend(config, STANDIN_THREADS="4")

    assert proc.returncode == SIGABRT_RETURNCODE, proc.stderr
    assert re.search(r"no communicator\[[123]\]", proc.stderr), proc.stderr
    assert proc.stdout == ""


# -- frontend: validation as GVirtuS does it ----------------------------------------------------


@pytest.mark.parametrize("address", ["localhost", "::1", "gvirtus-backend.gvirtus-system.svc"])
def test_frontend_rejects_a_server_address_that_is_not_a_dotted_quad(
    tmp_path: Path, listeners: list[socket.socket], address: str
) -> None:
    config = write_config(tmp_path / "p.json", [entry(address, port_of(listeners[0]))])

    proc = run_frontend(config)

    assert proc.returncode == 1, proc.stderr
    assert "IPv4" in proc.stderr
    assert address in proc.stderr
    assert accepted_count(listeners[0]) == 0


def test_frontend_aborts_on_a_numeric_port(tmp_path: Path, listeners: list[socket.socket]) -> None:
    config = write_config(tmp_path / "p.json", [entry("127.0.0.1", int(port_of(listeners[0])))])

    proc = run_frontend(config)

    assert proc.returncode == SIGABRT_RETURNCODE
    assert "not a JSON string" in proc.stderr
    assert accepted_count(listeners[0]) == 0


def test_frontend_exits_with_failure_when_the_backend_refuses_the_connection(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "p.json", [entry("127.0.0.1", str(free_port()))])

    proc = run_frontend(config)

    assert proc.returncode == 1
    assert "cannot connect" in proc.stderr


# -- frontend: where the config comes from ------------------------------------------------------


def test_frontend_prefers_gvirtus_config_over_gvirtus_home(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    config = write_config(tmp_path / "chosen.json", [entry("127.0.0.1", port_of(listeners[0]))])
    home = tmp_path / "home"
    write_config(home / "etc" / "properties.json", [entry("127.0.0.1", port_of(listeners[1]))])

    report(run_frontend(config, GVIRTUS_HOME=str(home)))

    assert [accepted_count(listeners[0]), accepted_count(listeners[1])] == [1, 0]


def test_frontend_reads_gvirtus_home_etc_properties_json_without_gvirtus_config(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    home = tmp_path / "home"
    write_config(home / "etc" / "properties.json", [entry("127.0.0.1", port_of(listeners[1]))])

    report(run_frontend(None, GVIRTUS_HOME=str(home)))

    assert accepted_count(listeners[1]) == 1


def test_frontend_aborts_when_the_config_file_is_missing(tmp_path: Path) -> None:
    proc = run_frontend(tmp_path / "absent.json")

    assert proc.returncode == SIGABRT_RETURNCODE
    assert "absent.json" in proc.stderr


def test_frontend_aborts_when_the_config_name_does_not_end_in_json(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    config = write_config(tmp_path / "p.conf", [entry("127.0.0.1", port_of(listeners[0]))])

    proc = run_frontend(config)

    assert proc.returncode == SIGABRT_RETURNCODE
    assert ".json" in proc.stderr
    assert accepted_count(listeners[0]) == 0


def test_shipped_config_is_one_placeholder_entry_laid_out_like_gvirtus_ships_it() -> None:
    path = SHIPPED_HOME / "etc" / "properties.json"
    config = json.loads(path.read_text())

    assert [e["endpoint"] for e in config["communicator"]] == [
        {"suite": "tcp/ip", "protocol": "tcp", "server_address": "127.0.0.1", "port": "9999"}
    ]
    assert config["secure_application"] is False
    lines = [line.strip() for line in path.read_text().splitlines()]
    assert '"server_address": "127.0.0.1",' in lines  # one key a line, as sed-era tools expect


def test_frontend_image_ships_the_config_where_its_gvirtus_home_points() -> None:
    (stage,) = parse_dockerfile((IMAGES / "standin_frontend" / "Dockerfile").read_text())
    copies = [c.arguments.split() for c in stage.all("COPY")]

    assert stage.env()["GVIRTUS_HOME"] == STANDIN_HOME
    assert ["--chown=65532:65532", "gvirtus/", f"{STANDIN_HOME}/"] in copies
    assert ["standin_frontend.py", STANDIN_COMMAND[0]] in copies
    assert stage.all("USER")[0].arguments == "65532:65532"


def test_backend_image_removes_every_shell_and_never_needs_one() -> None:
    # The chart's HTTP probes (the backend agent) must work with a GVirtuS image without a shell.
    (stage,) = parse_dockerfile((IMAGES / "standin_backend" / "Dockerfile").read_text())
    (run,) = stage.all("RUN")
    removal = json.loads(run.arguments)

    assert removal[:2] == ["/usr/bin/rm", "-f"]
    assert {"/usr/bin/sh", "/usr/bin/dash", "/usr/bin/bash"} <= set(removal[2:])
    assert json.loads(stage.all("ENTRYPOINT")[0].arguments)[0].startswith("/")


# -- backend -------------------------------------------------------------------------------------


@dataclass
class Backend:
    proc: subprocess.Popen[str]
    port: int
    status_port: int

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.status_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def connections(self) -> list[dict[str, Any]]:
        code, body = self.get("/connections")
        assert code == 200
        records: list[dict[str, Any]] = json.loads(body)
        return records

    def wait_for(self, predicate: Any, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            records = self.connections()
            if predicate(records):
                return records
            time.sleep(0.05)
        raise AssertionError(f"backend never showed {what}: {self.connections()}")


@pytest.fixture
def backend() -> Iterator[Backend]:
    port, status_port = free_port(), free_port()
    env = {**os.environ, "STANDIN_PORT": str(port), "STANDIN_STATUS_PORT": str(status_port)}
    proc = subprocess.Popen(
        [sys.executable, str(BACKEND)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    ready = json.loads(proc.stderr.readline())  # printed once both ports listen
    assert (ready["event"], ready["port"]) == ("listening", port)
    try:
        yield Backend(proc, port, status_port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.communicate()


def test_backend_records_each_peer_and_whether_it_is_still_open(backend: Backend) -> None:
    first = socket.create_connection(("127.0.0.1", backend.port))
    second = socket.create_connection(("127.0.0.1", backend.port))
    first.sendall(b"cudaMalloc")
    records = backend.wait_for(lambda r: len(r) == 2, "two connections")

    peers = {tuple(r["peer"]) for r in records}
    assert peers == {first.getsockname(), second.getsockname()}
    assert all(r["open"] and r["local"][1] == backend.port for r in records)

    first_end = first.getsockname()
    first.close()
    records = backend.wait_for(lambda r: sum(not c["open"] for c in r) == 1, "one closed")
    (closed,) = [r for r in records if not r["open"]]
    assert tuple(closed["peer"]) == first_end
    assert closed["bytes_received"] == len(b"cudaMalloc")
    assert closed["closed_at"] >= closed["accepted_at"]
    second.close()


def test_backend_prints_one_json_line_per_accepted_connection(backend: Backend) -> None:
    clients = [socket.create_connection(("127.0.0.1", backend.port)) for _ in range(3)]
    ends = sorted(client.getsockname() for client in clients)
    backend.wait_for(lambda r: len(r) == 3, "three connections")
    backend.proc.terminate()
    stdout, _ = backend.proc.communicate(timeout=10)
    for client in clients:
        client.close()

    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [line["event"] for line in lines] == ["accepted"] * 3
    assert sorted(tuple(line["peer"]) for line in lines) == ends


def test_backend_listens_on_every_ipv4_address_for_the_exec_probe(backend: Backend) -> None:
    wildcard = f"00000000:{backend.port:04X}"
    table = Path("/proc/net/tcp").read_text().splitlines()[1:]

    # The chart's probe looks for the port in state 0A (LISTEN) without connecting.
    assert any(row.split()[1] == wildcard and row.split()[3] == "0A" for row in table)
    with socket.create_connection(("127.0.0.2", backend.port)):  # another loopback address
        backend.wait_for(lambda r: any(c["local"][0] == "127.0.0.2" for c in r), "127.0.0.2")


def test_backend_status_port_answers_healthz_and_nothing_unknown(backend: Backend) -> None:
    assert backend.get("/healthz") == (200, b"ok\n")
    assert backend.get("/nothing")[0] == 404
    assert backend.connections() == []


def test_frontend_connections_stay_open_on_the_backend_until_the_frontend_stops(
    tmp_path: Path, backend: Backend
) -> None:
    config = write_config(tmp_path / "p.json", [entry("127.0.0.1", str(backend.port))] * 2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GVIRTUS", "STANDIN"))}
    env.update({"GVIRTUS_CONFIG": str(config), "STANDIN_THREADS": "2"})
    frontend = subprocess.Popen(
        [sys.executable, str(FRONTEND)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert frontend.stdout is not None
        got = json.loads(frontend.stdout.readline())  # printed once every thread is connected
        time.sleep(0.3)

        records = backend.connections()
        assert sorted(tuple(r["peer"]) for r in records) == sorted(map(tuple, got["local"]))
        assert all(r["open"] for r in records)
        assert frontend.poll() is None, "no STANDIN_HOLD_SECONDS: holds forever"
    finally:
        frontend.send_signal(signal.SIGTERM)
        assert frontend.wait(timeout=10) == 0
    backend.wait_for(lambda r: len(r) == 2 and not any(c["open"] for c in r), "both closed")
