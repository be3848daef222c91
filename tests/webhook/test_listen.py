"""Which addresses the webhook listens on: ``::`` means every address of both IP families."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
import trustme
from gvirtus_kai_webhook.server import ListenError, listening_socket

from tests.tlsfiles import VERIFIED_NAME, SecretVolume, client_context
from tests.webhookproc import WebhookProcess, run_webhook_to_exit, start_webhook

BACKLOG = 16


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    """Collects the sockets a test opens and closes them afterwards."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def _accepts(listener: socket.socket, host: str) -> bool:
    """Whether a TCP client connecting to ``host`` is accepted by ``listener``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    port = listener.getsockname()[1]
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        try:
            client.connect((host, port))
        except ConnectionRefusedError:
            return False
        accepted, _ = listener.accept()
        accepted.close()
        return True


@pytest.mark.parametrize("host", ["::", "0::0", "0:0:0:0:0:0:0:0"])
def test_ipv6_any_address_accepts_both_families(host: str, listeners: list[socket.socket]) -> None:
    listener = listening_socket(host, 0, BACKLOG)
    listeners.append(listener)
    listener.settimeout(10)
    assert listener.family == socket.AF_INET6
    assert listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    assert _accepts(listener, "127.0.0.1")
    assert _accepts(listener, "::1")


def test_ipv6_any_listener_can_rebind_a_port_in_time_wait(listeners: list[socket.socket]) -> None:
    listener = listening_socket("::", 0, BACKLOG)
    listeners.append(listener)
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0


@pytest.mark.parametrize(
    ("host", "family"), [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)]
)
def test_other_hosts_are_bound_as_given(
    host: str, family: socket.AddressFamily, listeners: list[socket.socket]
) -> None:
    listener = listening_socket(host, 0, BACKLOG)
    listeners.append(listener)
    listener.settimeout(10)
    assert (listener.family, listener.getsockname()[0]) == (family, host)
    assert _accepts(listener, host)


def test_ipv6_any_on_a_node_without_ipv6_listens_on_ipv4(
    monkeypatch: pytest.MonkeyPatch, listeners: list[socket.socket]
) -> None:
    monkeypatch.setattr(socket, "has_dualstack_ipv6", lambda: False)
    listener = listening_socket("::", 0, BACKLOG)
    listeners.append(listener)
    listener.settimeout(10)
    assert listener.family == socket.AF_INET
    assert listener.getsockname()[0] == "0.0.0.0"
    assert _accepts(listener, "127.0.0.1")


def test_ipv6_any_on_a_taken_port_raises_naming_the_address() -> None:
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ListenError, match=rf"\[::\]:{port}: .*already in use"):
            listening_socket("::", port, BACKLOG)


# --- the real process ------------------------------------------------------------------------


@pytest.fixture
def dual_stack_webhook(secret_volume: SecretVolume) -> Iterator[WebhookProcess]:
    webhook = start_webhook(
        {
            "LISTEN_HOST": "::",
            "TLS_CERT_FILE": str(secret_volume.cert_file),
            "TLS_KEY_FILE": str(secret_volume.key_file),
        }
    )
    try:
        yield webhook
    finally:
        assert webhook.stop() == 0


def _readyz_status(client: httpx.Client, host: str, port: int) -> int:
    url = f"https://{host}:{port}/readyz"
    return client.get(url, extensions={"sni_hostname": VERIFIED_NAME}).status_code


def test_listening_on_ipv6_any_serves_https_over_ipv4_and_ipv6(
    dual_stack_webhook: WebhookProcess, test_ca: trustme.CA
) -> None:
    dual_stack_webhook.wait_ready(client_context(test_ca))  # polls over 127.0.0.1
    with httpx.Client(verify=client_context(test_ca), timeout=10.0) as client:
        assert _readyz_status(client, "127.0.0.1", dual_stack_webhook.port) == 200
        assert _readyz_status(client, "[::1]", dual_stack_webhook.port) == 200


def test_ipv6_any_on_a_taken_port_exits_1_naming_the_address(
    secret_volume: SecretVolume,
) -> None:
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as taken:
        port = taken.getsockname()[1]
        done = run_webhook_to_exit(
            {
                "LISTEN_HOST": "::",
                "LISTEN_PORT": str(port),
                "TLS_CERT_FILE": str(secret_volume.cert_file),
                "TLS_KEY_FILE": str(secret_volume.key_file),
            }
        )
    assert done.returncode == 1
    assert f"cannot listen on [::]:{port}" in done.stderr
    assert "Traceback" not in done.stderr
