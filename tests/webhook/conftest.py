"""Fixtures for the webhook tests: a loopback DNS server, a test CA, the app in process, and the
real process over HTTPS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from gvirtus_kai_webhook.admission import AdmissionReviewer
from gvirtus_kai_webhook.app import build_app
from gvirtus_kai_webhook.dns import BackendResolver
from gvirtus_kai_webhook.metrics import WebhookMetrics
from gvirtus_kai_webhook.settings import Settings

from tests.dnsserver import LoopbackDnsServer
from tests.tlsfiles import SecretVolume, client_context, serving_cert
from tests.webhookproc import BACKEND_HOST, WebhookProcess, api_server_client, start_webhook

REVIEWS = Path(__file__).parent / "fixtures" / "reviews"
BACKEND_ADDRESS = "10.96.0.42"


def review_document(name: str = "pod-gpu-v1.json") -> dict[str, Any]:
    """A fresh copy of an AdmissionReview fixture, as the API server sends it."""
    document: dict[str, Any] = json.loads((REVIEWS / name).read_text())
    return document


@pytest.fixture
def dns_server() -> Iterator[LoopbackDnsServer]:
    """A loopback DNS server that knows the backend Service (A record, TTL 30 s)."""
    with LoopbackDnsServer() as server:
        server.set_a(BACKEND_HOST, BACKEND_ADDRESS, ttl=30)
        yield server


def settings_for(server: LoopbackDnsServer, **overrides: Any) -> Settings:
    """Settings that resolve the backend through ``server``; pods are pinned by DNS unless
    ``placement="controller"`` is given (the gated path has tests of its own)."""
    values: dict[str, Any] = {
        "placement": "dns",
        "backend_host": BACKEND_HOST,
        "dns_nameservers": server.nameserver,
        "dns_timeout_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


class InProcessWebhook:
    """The FastAPI app with its own metrics, reached through httpx's in-process transport (the
    HTTP parts are tested over HTTPS against the real process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = WebhookMetrics()
        self.resolver = BackendResolver(settings, self.metrics)
        self.ready = True
        reviewer = AdmissionReviewer(settings, self.resolver, self.metrics)
        self.app = build_app(reviewer, self.metrics.registry, lambda: self.ready)

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="https://webhook")

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


@pytest.fixture
def make_webhook(dns_server: LoopbackDnsServer) -> Callable[..., InProcessWebhook]:
    """Build an in-process webhook against ``dns_server``; keyword arguments override settings."""

    def make(**overrides: Any) -> InProcessWebhook:
        return InProcessWebhook(settings_for(dns_server, **overrides))

    return make


@pytest.fixture
def webhook(make_webhook: Callable[..., InProcessWebhook]) -> InProcessWebhook:
    return make_webhook()


@pytest.fixture
async def client(webhook: InProcessWebhook) -> AsyncIterator[httpx.AsyncClient]:
    async with webhook.client() as http:
        yield http


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def secret_volume(tmp_path: Path, test_ca: trustme.CA) -> SecretVolume:
    """A kubelet-style TLS Secret volume holding a serving certificate from ``test_ca``."""
    volume = SecretVolume(tmp_path / "tls")
    volume.write(serving_cert(test_ca))
    return volume


@dataclass
class RunningWebhook:
    process: WebhookProcess
    ca: trustme.CA
    dns: LoopbackDnsServer
    log_file: Path

    def client(self) -> httpx.Client:
        return api_server_client(client_context(self.ca))

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line]


def launch(
    directory: Path,
    ca: trustme.CA,
    dns: LoopbackDnsServer,
    prefix: list[str] | None = None,
    **settings: str,
) -> RunningWebhook:
    """The real ``gvirtus-webhook`` with a fresh serving certificate, once it is ready;
    ``prefix`` runs it through another command (say, one that lowers a resource limit)."""
    volume = SecretVolume(directory / "tls")
    volume.write(serving_cert(ca))
    log_file = directory / "webhook.log"
    with log_file.open("wb") as stderr:
        process = start_webhook(
            {
                "TLS_CERT_FILE": str(volume.cert_file),
                "TLS_KEY_FILE": str(volume.key_file),
                "DNS_NAMESERVERS": dns.nameserver,
                **settings,
            },
            stderr=stderr,
            prefix=prefix,
        )
    running = RunningWebhook(process, ca, dns, log_file)
    try:
        process.wait_ready(client_context(ca))
    except Exception:
        process.stop()
        raise
    return running
