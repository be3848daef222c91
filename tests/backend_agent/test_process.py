"""The agent process against real sockets of this machine's network namespace: a listener
standing in for GVirtuS and real client connections, counted without the agent ever connecting."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.backend_agent.process import COMMAND, agent_environment, running_agent

POD = "gvirtus-backend-test"


@pytest.fixture
def reserved() -> Iterator[socket.socket]:
    """A port bound but not yet listening: GVirtuS before it starts serving."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def connect(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_readyz_is_503_with_a_reason_until_the_port_listens(reserved: socket.socket) -> None:
    port = reserved.getsockname()[1]
    with running_agent(port) as agent:
        before = agent.get("/readyz")
        reserved.listen(5)
        agent.load_once(lambda load: load["listening"])
        after = agent.get("/readyz")

    assert before[0] == 503
    assert json.loads(before[1]) == {
        "ready": False,
        "reason": f"nothing listens on the GVirtuS port {port}",
    }
    assert after == (200, b'{"ready": true}')


def test_healthz_is_200_while_the_port_does_not_listen(reserved: socket.socket) -> None:
    with running_agent(reserved.getsockname()[1]) as agent:
        assert agent.get("/healthz")[0] == 200


@pytest.mark.parametrize("count", [1, 7])
def test_load_counts_the_real_connections_and_their_client(
    reserved: socket.socket, count: int
) -> None:
    port = reserved.getsockname()[1]
    reserved.listen(16)
    clients = connect(port, count)
    accepted = [reserved.accept()[0] for _ in clients]
    try:
        with running_agent(port) as agent:
            load = agent.load()
    finally:
        for sock in clients + accepted:
            sock.close()

    assert load == {
        "pod": POD,
        "listening": True,
        "port": port,
        "connections": count,
        "clients": ["127.0.0.1"],
        "gpus": [],
        "gpuReadings": "none",
    }


def test_connections_that_close_leave_the_count(reserved: socket.socket) -> None:
    port = reserved.getsockname()[1]
    reserved.listen(16)
    clients = connect(port, 5)
    accepted = [reserved.accept()[0] for _ in clients]
    with running_agent(port) as agent:
        before = agent.load()["connections"]
        for sock in clients[:3] + accepted[:3]:
            sock.close()
        after = agent.load_once(lambda load: load["connections"] != 5)["connections"]
    for sock in clients[3:] + accepted[3:]:
        sock.close()

    assert (before, after) == (5, 2)


def test_distinct_clients_are_listed_in_order(reserved: socket.socket) -> None:
    # Any 127/8 address is this machine's loopback: three clients of their own.
    port = reserved.getsockname()[1]
    reserved.listen(16)
    clients = []
    for source in ("127.0.0.3", "127.0.0.2", "127.0.0.3", "127.0.0.10"):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        clients.append(sock)
    accepted = [reserved.accept()[0] for _ in clients]
    try:
        with running_agent(port) as agent:
            load = agent.load()
    finally:
        for sock in clients + accepted:
            sock.close()

    assert load["connections"] == 4
    assert load["clients"] == ["127.0.0.2", "127.0.0.3", "127.0.0.10"]


def test_metrics_carry_the_counts_with_the_pod_name(reserved: socket.socket) -> None:
    port = reserved.getsockname()[1]
    reserved.listen(16)
    clients = connect(port, 3)
    accepted = [reserved.accept()[0] for _ in clients]
    try:
        with running_agent(port) as agent:
            status, body = agent.get("/metrics")
    finally:
        for sock in clients + accepted:
            sock.close()

    assert status == 200
    found = samples(body.decode())
    pod = (("pod", POD),)
    assert found[("gvirtus_backend_listening", pod)] == 1
    assert found[("gvirtus_backend_connections", pod)] == 3
    assert found[("gvirtus_backend_clients", pod)] == 1
    # No driver here: the GPU families are declared and hold no samples.
    assert not [key for key in found if key[0].startswith("gvirtus_backend_gpu_")]


def test_the_agent_never_connects_to_the_gvirtus_port(reserved: socket.socket) -> None:
    port = reserved.getsockname()[1]
    reserved.listen(16)
    reserved.setblocking(False)
    with running_agent(port) as agent:
        for _ in range(5):
            agent.get("/readyz")
            agent.load()
            agent.get("/metrics")
        with pytest.raises(BlockingIOError):
            reserved.accept()


def test_without_a_driver_it_says_so_once_in_its_log(reserved: socket.socket) -> None:
    with running_agent(reserved.getsockname()[1]) as agent:
        loads = [agent.load() for _ in range(3)]
        log = agent.stop()

    if any(load["gpuReadings"] == "nvml" for load in loads):
        pytest.skip("this machine has an NVIDIA driver")
    lines = [json.loads(line) for line in log.splitlines()]
    said = [line for line in lines if line["msg"] == "no NVIDIA driver here: reporting no GPUs"]
    assert len(said) == 1
    assert all(load["gpus"] == [] and load["gpuReadings"] == "none" for load in loads)


def test_help_lists_every_setting() -> None:
    result = subprocess.run(
        [COMMAND, "--help"], env=agent_environment(), capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 0
    for variable in ("GVIRTUS_PORT", "POD_NAME", "PROC_NET", "HEALTH_PORT", "LOG_LEVEL"):
        assert f"GVIRTUS_KAI_{variable}" in result.stdout


@pytest.mark.parametrize(
    ("variable", "value"),
    [("gvirtus_port", "0"), ("gvirtus_port", "http"), ("health_port", "70000")],
)
def test_a_bad_value_exits_2_naming_the_variable(variable: str, value: str) -> None:
    result = subprocess.run(
        [COMMAND],
        env=agent_environment(**{variable: value}),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert f"GVIRTUS_KAI_{variable.upper()}" in result.stderr


def test_socket_tables_that_cannot_be_read_exit_2_naming_the_directory(tmp_path: Path) -> None:
    result = subprocess.run(
        [COMMAND],
        env=agent_environment(proc_net=str(tmp_path / "absent")),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert "GVIRTUS_KAI_PROC_NET" in result.stderr


def test_connections_opened_while_it_runs_show_in_a_later_reading(
    reserved: socket.socket,
) -> None:
    port = reserved.getsockname()[1]
    reserved.listen(16)
    with running_agent(port) as agent:
        before = agent.load()["connections"]
        clients = connect(port, 6)
        accepted = [reserved.accept()[0] for _ in clients]
        try:
            after = agent.load_once(lambda load: load["connections"] == 6)
        finally:
            for sock in clients + accepted:
                sock.close()

    assert before == 0
    assert (after["connections"], after["clients"]) == (6, ["127.0.0.1"])
