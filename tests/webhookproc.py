"""Start the real ``gvirtus-webhook`` console script and talk to it as the API server does.

Shared by the webhook tests and ``make demo``: the process gets only ``GVIRTUS_KAI_*`` settings,
serves HTTPS on 127.0.0.1, and clients verify its certificate for the Service DNS name while
connecting to the loopback address.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.tlsfiles import VERIFIED_NAME

# The default of GVIRTUS_KAI_BACKEND_HOST: the headless Service of the ready backend pods.
BACKEND_HOST = "gvirtus-backend-headless.gvirtus-system.svc.cluster.local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def webhook_command() -> list[str]:
    """The console script installed next to this interpreter (the venv's bin directory)."""
    script = Path(sys.executable).with_name("gvirtus-webhook")
    if script.exists():
        return [str(script)]
    found = shutil.which("gvirtus-webhook")
    if found is None:
        raise RuntimeError("gvirtus-webhook is not installed in this environment")
    return [found]


def api_server_client(context: ssl.SSLContext, timeout: float = 10.0) -> httpx.Client:
    """An HTTPS client that verifies certificates with ``context`` (see ``WebhookProcess.post``)."""
    return httpx.Client(verify=context, timeout=timeout)


@dataclass
class WebhookProcess:
    process: subprocess.Popen[bytes]
    port: int

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    # Connect to 127.0.0.1 but verify the certificate for the Service name, as the API server
    # verifies ``<service>.<namespace>.svc``.
    @property
    def tls_extensions(self) -> dict[str, Any]:
        return {"sni_hostname": VERIFIED_NAME}

    def post(self, client: httpx.Client, path: str, body: bytes) -> httpx.Response:
        headers = {"content-type": "application/json"}
        return client.post(
            self.url(path), content=body, headers=headers, extensions=self.tls_extensions
        )

    def get(self, client: httpx.Client, path: str) -> httpx.Response:
        return client.get(self.url(path), extensions=self.tls_extensions)

    def wait_ready(self, context: ssl.SSLContext, timeout: float = 30.0) -> float:
        """Poll ``/readyz`` until 200; return the seconds waited. Raises if the process exits."""
        started = time.monotonic()
        with api_server_client(context, timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"webhook exited with {self.process.returncode}")
                try:
                    if self.get(client, "/readyz").status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"webhook not ready after {timeout}s")
                time.sleep(0.02)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; returns the exit code (kills and raises if it does not stop)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode


def webhook_environment(settings: dict[str, str]) -> dict[str, str]:
    """The caller's environment without any ``GVIRTUS_KAI_*`` leaking in, plus
    ``GVIRTUS_KAI_<KEY>`` for each settings entry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    env.update({f"GVIRTUS_KAI_{key}": value for key, value in settings.items()})
    return env


def run_webhook_to_exit(settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``gvirtus-webhook`` until it exits (a start-up failure), its output captured."""
    return subprocess.run(
        webhook_command(),
        env=webhook_environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_webhook(
    settings: dict[str, str],
    *,
    stderr: Any = None,
    prefix: list[str] | None = None,
    command: list[str] | None = None,
) -> WebhookProcess:
    """Start ``gvirtus-webhook`` with ``GVIRTUS_KAI_<KEY>`` for each settings entry.

    The environment is otherwise the caller's minus any ``GVIRTUS_KAI_*`` leaking in.
    """
    port = int(settings.get("LISTEN_PORT") or free_port())
    env = webhook_environment({"LISTEN_HOST": "127.0.0.1", "LISTEN_PORT": str(port), **settings})
    process = subprocess.Popen(
        [*(prefix or []), *(command or webhook_command())],
        env=env,
        stderr=stderr,
        start_new_session=True,  # its own process group, so cleanup can never hit ours
    )
    return WebhookProcess(process, port)
