"""What one hostile or broken client can make the real webhook hold, over real sockets.

Each attack against the real process: a header flood, idle TLS connections, a
request head or body sent a byte at a time, and a connection flood under a low descriptor limit.
Timing bounds are generous (a shared machine); the settings under test are short.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trustme

from tests.dnsserver import LoopbackDnsServer
from tests.tlsfiles import SERVICE_DNS_NAMES, client_context
from tests.webhook.conftest import RunningWebhook, launch, review_document

IDLE_SECONDS = 1.0  # GVIRTUS_KAI_IDLE_TIMEOUT_SECONDS of the webhook under test
BODY_SECONDS = 1.0  # GVIRTUS_KAI_BODY_TIMEOUT_SECONDS
SLACK = 5.0  # what a loaded machine may add to a deadline
DESCRIPTOR_LIMIT = 256


@pytest.fixture
def webhook(
    tmp_path: Path, test_ca: trustme.CA, dns_server: LoopbackDnsServer
) -> Iterator[RunningWebhook]:
    running = launch(
        tmp_path,
        test_ca,
        dns_server,
        IDLE_TIMEOUT_SECONDS=str(IDLE_SECONDS),
        BODY_TIMEOUT_SECONDS=str(BODY_SECONDS),
    )
    yield running
    running.process.stop()


def tls_connection(webhook: RunningWebhook) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", webhook.process.port), timeout=30)
    return client_context(webhook.ca).wrap_socket(raw, server_hostname=SERVICE_DNS_NAMES[2])


def read_until_closed(connection: socket.socket) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and when that happened."""
    received = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while chunk := connection.recv(65536):
            received += chunk
    return received, time.monotonic()


def metric(webhook: RunningWebhook, name: str) -> float:
    with webhook.client() as client:
        page = webhook.process.get(client, "/metrics").text
    match = re.search(rf"^{name} (\S+)$", page, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_an_endless_request_head_is_cut_off_with_431(webhook: RunningWebhook) -> None:
    rss_before = psutil.Process(webhook.process.process.pid).memory_info().rss
    sent = 0
    with tls_connection(webhook) as connection:
        connection.sendall(b"POST /mutate HTTP/1.1\r\nHost: webhook\r\n")
        line = b"X-Flood: " + b"a" * 1000 + b"\r\n"
        started = time.monotonic()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            while sent < 200_000_000:  # the attack sent 152 MB
                connection.sendall(line)
                sent += len(line)
        cut_off = time.monotonic() - started
        answer, _ = read_until_closed(connection)
    rss_after = psutil.Process(webhook.process.process.pid).memory_info().rss
    # Loopback socket buffers take tens of MB before the sender notices the close.
    assert sent < 200_000_000
    assert cut_off < SLACK
    assert answer.startswith(b"HTTP/1.1 431") or answer == b""
    assert rss_after - rss_before < 20 * 2**20


def test_a_head_over_the_limit_is_answered_431_with_the_json_error_body(
    webhook: RunningWebhook,
) -> None:
    head = b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nX-Big: " + b"a" * 20_000 + b"\r\n"
    with tls_connection(webhook) as connection:
        connection.sendall(head)  # then wait: everything sent has been read, so no reset
        answer, _ = read_until_closed(connection)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 431")
    assert json.loads(body) == {"code": 431, "message": "request head is larger than 16384 bytes"}


def test_a_large_unparseable_head_gets_one_400_and_nothing_after_it(
    webhook: RunningWebhook,
) -> None:
    with tls_connection(webhook) as connection:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            connection.sendall(b"\x00garbage" * 5000)  # over the head limit, and no HTTP at all
        answer, _ = read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 400")
    assert answer.count(b"HTTP/1.1") == 1
    assert [line for line in webhook.log_lines() if line["level"] == "error"] == []


def test_a_large_review_is_answered_not_taken_for_a_header_flood(webhook: RunningWebhook) -> None:
    """A body near the 3 MiB limit arrives in the same reads as its head: the head limit must
    count only what comes before a request starts."""
    document = review_document()
    document["request"]["object"]["metadata"]["annotations"] = {"example.com/big": "x" * 2**21}
    body = json.dumps(document)
    with tls_connection(webhook) as connection:
        answer = exchange(connection, "POST", "/mutate", body)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        # The connection is still good for the next review.
        answer = exchange(connection, "POST", "/mutate", json.dumps(review_document()))
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"allowed":true' in answer


def test_pipelined_requests_are_each_answered(webhook: RunningWebhook) -> None:
    body = json.dumps(review_document())
    request = (
        f"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    with tls_connection(webhook) as connection:
        connection.sendall(request * 3 + b"GET /healthz HTTP/1.1\r\nHost: webhook\r\n\r\n")
        received = b""
        while received.count(b"HTTP/1.1 200") < 4 or not received.endswith(b"ok\n"):
            chunk = connection.recv(65536)
            assert chunk, received
            received += chunk
    assert received.count(b'"allowed":true') == 3


def test_idle_tls_connections_are_closed_after_the_idle_timeout(webhook: RunningWebhook) -> None:
    connections = [tls_connection(webhook) for _ in range(5)]  # handshaken, nothing sent
    started = time.monotonic()
    try:
        closed_at = [read_until_closed(connection)[1] for connection in connections]
    finally:
        for connection in connections:
            connection.close()
    assert max(closed_at) - started < IDLE_SECONDS + SLACK


def test_a_connection_that_never_starts_tls_is_closed(webhook: RunningWebhook) -> None:
    with socket.create_connection(("127.0.0.1", webhook.process.port), timeout=30) as raw:
        started = time.monotonic()
        answer, closed_at = read_until_closed(raw)
    assert answer == b""
    assert closed_at - started < IDLE_SECONDS + SLACK


def test_an_idle_keep_alive_connection_is_closed_after_its_last_answer(
    webhook: RunningWebhook,
) -> None:
    with tls_connection(webhook) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: webhook\r\n\r\n")
        assert connection.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        _, closed_at = read_until_closed(connection)
    assert closed_at - started < IDLE_SECONDS + SLACK


def test_a_head_sent_a_byte_at_a_time_is_closed_at_one_deadline(
    webhook: RunningWebhook,
) -> None:
    head = b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nX-Slow: " + b"a" * 200
    with tls_connection(webhook) as connection:
        started = time.monotonic()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            for byte in head:  # one byte every 50 ms: far inside the idle timeout each
                connection.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - started > IDLE_SECONDS + SLACK:
                    break
        _, closed_at = read_until_closed(connection)
    assert closed_at - started < IDLE_SECONDS + SLACK


def test_a_body_sent_a_byte_at_a_time_gets_408_at_the_body_deadline(
    webhook: RunningWebhook,
) -> None:
    body = json.dumps(review_document()).encode()
    head = (
        f"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    answer = b""
    with tls_connection(webhook) as connection:
        connection.sendall(head)
        started = time.monotonic()
        connection.settimeout(0.05)
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            for byte in body:
                connection.sendall(bytes([byte]))
                with contextlib.suppress(TimeoutError):
                    answer += connection.recv(65536)
                if answer or time.monotonic() - started > BODY_SECONDS + SLACK:
                    break
        connection.settimeout(30)
        rest, closed_at = read_until_closed(connection)
    answer += rest
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request body not received within 1s" in answer
    assert closed_at - started < BODY_SECONDS + SLACK


def test_a_client_still_sending_after_its_408_is_let_go_without_an_error_logged(
    webhook: RunningWebhook,
) -> None:
    """It never reads the answer nor answers the TLS close: a client problem, not a failure of
    the webhook (it once logged one, with a traceback)."""
    body = json.dumps(review_document()).encode()
    head = (
        f"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with tls_connection(webhook) as connection:
        connection.sendall(head)
        started = time.monotonic()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            for byte in body:  # past the body deadline and the close that follows
                connection.sendall(bytes([byte]))
                time.sleep(0.05)
                if time.monotonic() - started > BODY_SECONDS + 2.0:
                    break
        answer, _ = read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 408")
    assert [line for line in webhook.log_lines() if line["level"] == "error"] == []


def exchange(connection: ssl.SSLSocket, method: str, path: str, body: str = "") -> bytes:
    """One HTTP/1.1 request on an open connection, kept alive; the whole answer."""
    head = f"{method} {path} HTTP/1.1\r\nHost: webhook\r\nContent-Length: {len(body)}\r\n"
    connection.sendall(f"{head}Content-Type: application/json\r\n\r\n{body}".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += connection.recv(65536)
    length = re.search(rb"content-length: (\d+)", answer, re.IGNORECASE)
    assert length, answer
    while len(answer.partition(b"\r\n\r\n")[2]) < int(length.group(1)):
        answer += connection.recv(65536)
    return answer


def lowered_descriptor_limit(limit: int) -> list[str]:
    """A command prefix that runs the rest of the command line with RLIMIT_NOFILE = ``limit``."""
    script = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", script]


def test_a_connection_flood_under_a_low_descriptor_limit_is_capped_and_survived(
    tmp_path: Path, test_ca: trustme.CA, dns_server: LoopbackDnsServer
) -> None:
    webhook = launch(
        tmp_path,
        test_ca,
        dns_server,
        prefix=lowered_descriptor_limit(DESCRIPTOR_LIMIT),
        IDLE_TIMEOUT_SECONDS="30",  # the flood stays for the whole test
    )
    process = psutil.Process(webhook.process.process.pid)
    flood: list[socket.socket] = []
    try:
        with tls_connection(webhook) as kept_alive:  # as the API server keeps its connections
            assert exchange(kept_alive, "GET", "/readyz").startswith(b"HTTP/1.1 200")
            for _ in range(2 * DESCRIPTOR_LIMIT):
                flood.append(socket.create_connection(("127.0.0.1", webhook.process.port)))
            time.sleep(1.0)  # let the webhook accept, or refuse, all it can
            # The open connection still works, DNS lookup included (it needs a descriptor).
            review = exchange(kept_alive, "POST", "/mutate", json.dumps(review_document()))
            assert review.startswith(b"HTTP/1.1 200")
            assert b'"allowed":true' in review
            descriptors = process.num_fds()
        for connection in flood:
            connection.close()
        flood.clear()
        refused = metric(webhook, "gvirtus_webhook_connections_refused_total")
    finally:
        for connection in flood:
            connection.close()
        webhook.process.stop()
    assert descriptors < DESCRIPTOR_LIMIT
    assert refused > 0
    warnings = [line for line in webhook.log_lines() if line["level"] == "warning"]
    assert any(str(line["msg"]).startswith("too many connections") for line in warnings)
