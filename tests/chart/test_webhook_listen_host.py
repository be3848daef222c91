"""`webhook.listenHost` gives the real webhook process the listener values.yaml promises.

The webhook is started with the rendered Deployment env; only the certificate paths, the port and
the nameserver are pointed at test files and loopback servers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.chart.conftest import env_of, render
from tests.dnsserver import LoopbackDnsServer
from tests.tlsfiles import VERIFIED_NAME, SecretVolume, client_context, serving_cert
from tests.webhookproc import WebhookProcess, free_port, start_webhook

READY_TIMEOUT_SECONDS = 30.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def dns_server() -> Iterator[LoopbackDnsServer]:
    with LoopbackDnsServer() as server:
        yield server


def _start_rendered(
    listen_host: str, tmp_path: Path, ca: trustme.CA, dns: LoopbackDnsServer
) -> WebhookProcess:
    env = env_of(render(values={"webhook.listenHost": listen_host}).one("Deployment", "webhook"))
    volume = SecretVolume(tmp_path / "tls")
    volume.write(serving_cert(ca))
    settings = {name.removeprefix("GVIRTUS_KAI_"): value for name, value in env.items()}
    settings |= {
        "TLS_CERT_FILE": str(volume.cert_file),
        "TLS_KEY_FILE": str(volume.key_file),
        "LISTEN_PORT": str(free_port()),
        "DNS_NAMESERVERS": dns.nameserver,
    }
    assert settings["LISTEN_HOST"] == listen_host
    return start_webhook(settings)


def _readyz(client: httpx.Client, host: str, port: int) -> int | str:
    try:
        url = f"https://{host}:{port}/readyz"
        return client.get(url, extensions={"sni_hostname": VERIFIED_NAME}).status_code
    except httpx.TransportError as exc:
        return type(exc).__name__


def _answers_on(process: WebhookProcess, ca: trustme.CA, host: str) -> int | str:
    """/readyz status on ``host``, waiting for the process to come up on its listen address."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with httpx.Client(verify=client_context(ca), timeout=2.0) as client:
        while True:
            assert process.process.poll() is None, "webhook exited"
            answer = _readyz(client, host, process.port)
            if answer == 200 or time.monotonic() > deadline:
                return answer
            time.sleep(0.05)


def test_default_listen_host_serves_ipv4(
    tmp_path: Path, ca: trustme.CA, dns_server: LoopbackDnsServer
) -> None:
    webhook = _start_rendered("0.0.0.0", tmp_path, ca, dns_server)
    try:
        assert _answers_on(webhook, ca, "127.0.0.1") == 200
    finally:
        assert webhook.stop() == 0


def test_ipv6_any_listen_host_serves_both_ip_families(
    tmp_path: Path, ca: trustme.CA, dns_server: LoopbackDnsServer
) -> None:
    # "::" is every address of both families, so on a dual-stack cluster the API server and
    # the kubelet's probes reach the webhook whichever family they use.
    webhook = _start_rendered("::", tmp_path, ca, dns_server)
    try:
        assert _answers_on(webhook, ca, "[::1]") == 200
        assert _answers_on(webhook, ca, "127.0.0.1") == 200
    finally:
        assert webhook.stop() == 0
