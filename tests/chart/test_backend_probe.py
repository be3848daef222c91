"""The backend's exec probe (without the agent), run for real: it sees a LISTEN socket on the port
and never connects.

GVirtuS never closes a connection it accepted, so a probe that connects leaks a descriptor in the
backend on every check. The rendered probe command runs here with /bin/sh against real sockets in
this machine's network namespace, as the kubelet runs it inside the backend container.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.chart.conftest import container, render


def _probe_command(port: int, probe: str = "readinessProbe") -> list[str]:
    values = {"backend.containerPort": port, "backend.agent.enabled": False}
    backend = render(values=values).one("DaemonSet", "backend")
    command: list[str] = container(backend)[probe]["exec"]["command"]
    return command


def _run(command: list[str]) -> int:
    return subprocess.run(command, capture_output=True, timeout=10, check=False).returncode


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    sock.setblocking(False)
    yield sock
    sock.close()


def _accepted_nothing(sock: socket.socket) -> bool:
    try:
        connection, _ = sock.accept()
    except BlockingIOError:
        return True
    connection.close()
    return False


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_probe_passes_while_the_port_listens_without_connecting(
    listener: socket.socket, probe: str
) -> None:
    command = _probe_command(listener.getsockname()[1], probe)
    assert [_run(command) for _ in range(3)] == [0, 0, 0]
    assert _accepted_nothing(listener)


def test_probe_fails_once_nothing_listens(listener: socket.socket) -> None:
    command = _probe_command(listener.getsockname()[1])
    assert _run(command) == 0
    listener.close()
    assert _run(command) == 1


def test_probe_ignores_a_listener_on_another_port(listener: socket.socket) -> None:
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))  # reserved, not listening
        assert _run(_probe_command(probe_port.getsockname()[1])) == 1


def test_probe_ignores_an_established_connection_on_the_port(listener: socket.socket) -> None:
    # After the listener closes, the accepted connection still has the port as its local port.
    port = listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as client:
        listener.setblocking(True)
        accepted, _ = listener.accept()
        listener.close()
        with accepted:
            assert client.fileno() >= 0
            assert _run(_probe_command(port)) == 1


def test_probe_sees_an_ipv6_only_listener() -> None:
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError as exc:
        pytest.skip(f"no IPv6 on this machine: {exc}")
    with sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::1", 0))
        sock.listen(5)
        assert _run(_probe_command(sock.getsockname()[1])) == 0


def test_probe_reads_the_port_as_proc_net_tcp_writes_it() -> None:
    # /proc/net/tcp* print the local port as four upper-case hex digits.
    script = _probe_command(9999)[2]
    assert "= 270F ]" in script
    assert "= 0050 ]" in _probe_command(80)[2]
