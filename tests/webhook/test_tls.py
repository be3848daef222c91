"""Serving-certificate reloads: Kubernetes-style Secret updates, without a restart."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from gvirtus_kai_webhook.metrics import WebhookMetrics
from gvirtus_kai_webhook.tls import ReloadingServerTLS, TLSLoadError

from tests.dnsserver import LoopbackDnsServer
from tests.tlsfiles import (
    VERIFIED_NAME,
    SecretVolume,
    client_context,
    old_protocol_client,
    serving_cert,
)
from tests.webhook.conftest import review_document
from tests.webhookproc import (
    api_server_client,
    start_webhook,
    webhook_command,
    webhook_environment,
)


def trusting(*cas: trustme.CA) -> ssl.SSLContext:
    context = client_context(cas[0])
    for ca in cas[1:]:
        context.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
    return context


@dataclass
class EchoServer:
    """A TLS line-echo server on the reloading context, for handshake-level checks."""

    tls: ReloadingServerTLS
    server: asyncio.Server

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def connect(
        self, trust: ssl.SSLContext
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=trust, server_hostname=VERIFIED_NAME
        )

    async def round_trip(self, trust: ssl.SSLContext) -> bytes:
        reader, writer = await self.connect(trust)
        try:
            return await echo(reader, writer)
        finally:
            writer.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"ping\n")
    await writer.drain()
    return await asyncio.wait_for(reader.readline(), 10)


async def _serve_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@pytest.fixture
def metrics() -> WebhookMetrics:
    return WebhookMetrics()


@pytest.fixture
async def echo_server(
    secret_volume: SecretVolume, metrics: WebhookMetrics
) -> AsyncIterator[EchoServer]:
    tls = ReloadingServerTLS(secret_volume.cert_file, secret_volume.key_file, metrics)
    server = await asyncio.start_server(_serve_echo, "127.0.0.1", 0, ssl=tls.listening_context)
    yield EchoServer(tls, server)
    server.close()


def reloads(metrics: WebhookMetrics, result: str) -> float:
    return (
        metrics.registry.get_sample_value("gvirtus_webhook_tls_reloads_total", {"result": result})
        or 0.0
    )


async def test_new_handshakes_get_the_rotated_certificate(
    echo_server: EchoServer, secret_volume: SecretVolume, test_ca: trustme.CA
) -> None:
    new_ca = trustme.CA()
    secret_volume.write(serving_cert(new_ca))
    assert echo_server.tls.reload_if_changed()
    assert await echo_server.round_trip(client_context(new_ca)) == b"ping\n"
    with pytest.raises(ssl.SSLCertVerificationError):
        await echo_server.round_trip(client_context(test_ca))


async def test_open_connections_survive_a_rotation(
    echo_server: EchoServer, secret_volume: SecretVolume, test_ca: trustme.CA
) -> None:
    reader, writer = await echo_server.connect(client_context(test_ca))
    secret_volume.write(serving_cert(trustme.CA()))
    assert echo_server.tls.reload_if_changed()
    assert await echo(reader, writer) == b"ping\n"
    writer.close()


async def test_unchanged_files_are_not_reloaded(
    echo_server: EchoServer, metrics: WebhookMetrics
) -> None:
    assert not echo_server.tls.reload_if_changed()
    assert reloads(metrics, "success") == 0


async def test_mismatched_pair_keeps_the_previous_certificate(
    echo_server: EchoServer,
    secret_volume: SecretVolume,
    test_ca: trustme.CA,
    metrics: WebhookMetrics,
) -> None:
    new_ca = trustme.CA()
    first, second = serving_cert(new_ca), serving_cert(new_ca)
    # Caught mid-rotation: the new certificate next to a key that does not belong to it.
    secret_volume.write_files(
        {"tls.crt": first.cert_chain_pems[0].bytes(), "tls.key": second.private_key_pem.bytes()}
    )
    assert not echo_server.tls.reload_if_changed()
    assert reloads(metrics, "failure") == 1
    assert await echo_server.round_trip(client_context(test_ca)) == b"ping\n"
    # The failed files are not retried every tick, only once they change again.
    assert not echo_server.tls.reload_if_changed()
    assert reloads(metrics, "failure") == 1
    secret_volume.write(first)
    assert echo_server.tls.reload_if_changed()
    assert await echo_server.round_trip(client_context(new_ca)) == b"ping\n"
    assert reloads(metrics, "success") == 1


async def test_files_missing_mid_swap_keep_the_previous_certificate(
    echo_server: EchoServer, secret_volume: SecretVolume, test_ca: trustme.CA
) -> None:
    (secret_volume.root / "..data").unlink()
    assert not echo_server.tls.reload_if_changed()
    assert await echo_server.round_trip(client_context(test_ca)) == b"ping\n"


async def test_rotated_context_still_refuses_tls_1_1(
    echo_server: EchoServer, secret_volume: SecretVolume
) -> None:
    new_ca = trustme.CA()
    secret_volume.write(serving_cert(new_ca))
    assert echo_server.tls.reload_if_changed()
    old_client = old_protocol_client(new_ca, ssl.TLSVersion.TLSv1_1)
    # The server drops the handshake; which error the client sees depends on the timing.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await echo_server.round_trip(old_client)


def test_unreadable_files_at_start_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TLSLoadError, match=r"missing\.crt"):
        ReloadingServerTLS(tmp_path / "missing.crt", tmp_path / "missing.key")


def encrypted_key(cert: trustme.LeafCert) -> bytes:
    """The certificate's private key as PEM encrypted with a passphrase."""
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )


def test_an_encrypted_key_at_start_is_an_error_naming_the_file(
    secret_volume: SecretVolume, test_ca: trustme.CA
) -> None:
    cert = serving_cert(test_ca)
    secret_volume.write_files(
        {"tls.crt": cert.cert_chain_pems[0].bytes(), "tls.key": encrypted_key(cert)}
    )
    with pytest.raises(TLSLoadError, match=r"tls\.key is encrypted"):
        ReloadingServerTLS(secret_volume.cert_file, secret_volume.key_file)


def test_the_process_with_an_encrypted_key_exits_2_without_reading_stdin(
    secret_volume: SecretVolume, test_ca: trustme.CA, tmp_path: Path
) -> None:
    cert = serving_cert(test_ca)
    secret_volume.write_files(
        {"tls.crt": cert.cert_chain_pems[0].bytes(), "tls.key": encrypted_key(cert)}
    )
    env = webhook_environment(
        {"TLS_CERT_FILE": str(secret_volume.cert_file), "TLS_KEY_FILE": str(secret_volume.key_file)}
    )
    log = tmp_path / "stderr"
    # stdin stays open and empty: an OpenSSL prompt would wait on it until the timeout.
    with log.open("w") as stderr:
        process = subprocess.Popen(webhook_command(), env=env, stdin=subprocess.PIPE, stderr=stderr)
        try:
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            assert process.stdin is not None
            process.stdin.close()
    lines = log.read_text().splitlines()
    assert code == 2
    assert f"the TLS key {secret_volume.key_file} is encrypted" in lines[-1]
    assert all(json.loads(line) for line in lines)  # no "Enter PEM pass phrase:" among them


async def test_an_encrypted_key_at_reload_is_a_counted_failure(
    echo_server: EchoServer,
    secret_volume: SecretVolume,
    test_ca: trustme.CA,
    metrics: WebhookMetrics,
) -> None:
    cert = serving_cert(trustme.CA())
    secret_volume.write_files(
        {"tls.crt": cert.cert_chain_pems[0].bytes(), "tls.key": encrypted_key(cert)}
    )
    assert not echo_server.tls.reload_if_changed()
    assert reloads(metrics, "failure") == 1
    assert await echo_server.round_trip(client_context(test_ca)) == b"ping\n"


def test_rotation_under_load_fails_no_request(
    tmp_path: Path, test_ca: trustme.CA, dns_server: LoopbackDnsServer
) -> None:
    """The real server: reviews on fresh connections while the Secret is swapped."""
    volume = SecretVolume(tmp_path / "tls")
    volume.write(serving_cert(test_ca))
    webhook = start_webhook(
        {
            "TLS_CERT_FILE": str(volume.cert_file),
            "TLS_KEY_FILE": str(volume.key_file),
            "DNS_NAMESERVERS": dns_server.nameserver,
        }
    )
    new_ca = trustme.CA()
    payload = json.dumps(review_document()).encode()
    outcomes: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        either = trusting(test_ca, new_ca)
        while not stop.is_set():
            try:
                with api_server_client(either) as client:  # a new connection every time
                    response = webhook.post(client, "/mutate", payload)
                ok = response.status_code == 200 and response.json()["response"]["allowed"]
                outcomes.append("ok" if ok else f"bad answer {response.status_code}")
            except httpx.HTTPError as exc:
                outcomes.append(f"{type(exc).__name__}: {exc}")

    try:
        webhook.wait_ready(client_context(test_ca))
        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            time.sleep(0.5)
            volume.write(serving_cert(new_ca))
            deadline = time.monotonic() + 20
            with api_server_client(client_context(new_ca)) as new_only:
                while True:
                    try:
                        if webhook.get(new_only, "/readyz").status_code == 200:
                            break
                    except httpx.ConnectError:
                        pass
                    assert time.monotonic() < deadline, "the new certificate was never served"
                    time.sleep(0.05)
            time.sleep(0.3)
        finally:
            stop.set()
            worker.join(30)
        old_only = api_server_client(client_context(test_ca))
        with old_only, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY"):
            webhook.get(old_only, "/readyz")
        with api_server_client(client_context(new_ca)) as new_only:
            metrics = webhook.get(new_only, "/metrics").text
    finally:
        webhook.stop()
    failures = [outcome for outcome in outcomes if outcome != "ok"]
    assert failures == []
    assert len(outcomes) >= 10
    assert 'gvirtus_webhook_tls_reloads_total{result="success"} 1.0' in metrics
