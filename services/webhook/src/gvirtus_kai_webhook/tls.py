"""The serving TLS context, reloaded when Kubernetes rotates the mounted certificate Secret.

The server binds its listener to one ``SSLContext`` for the life of the process. Loading a new pair
into that same context is not atomic: ``load_cert_chain`` installs the certificate before it checks
the key, so a mismatched pair (files caught mid-rotation) would leave a broken context serving
every new handshake. Instead each pair is loaded into a fresh context, and the listening context's
SNI callback (which OpenSSL runs for every ClientHello, with or without SNI) moves each new
connection onto the newest good context. A pair that fails to load is never used; the previous one
keeps serving and the files are tried again when they change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

from gvirtus_kai_webhook.metrics import WebhookMetrics

log = logging.getLogger(__name__)

_FileState = tuple[int, int, int, int]  # device, inode, mtime (ns), size


class TLSLoadError(Exception):
    """The certificate or key could not be loaded; the message names the files and the reason."""


def server_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context holding the given certificate chain and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])

    def no_passphrase() -> bytes:
        # Without a callback OpenSSL would prompt "Enter PEM pass phrase:" on the terminal.
        raise TLSLoadError(f"the TLS key {key_file} is encrypted; mount an unencrypted key")

    try:
        context.load_cert_chain(cert_file, key_file, password=no_passphrase)
    except (OSError, ssl.SSLError) as exc:
        raise TLSLoadError(
            f"cannot load TLS certificate {cert_file} with key {key_file}: {exc}"
        ) from exc
    return context


class ReloadingServerTLS:
    def __init__(
        self, cert_file: str | Path, key_file: str | Path, metrics: WebhookMetrics | None = None
    ) -> None:
        """Load the pair now (raising ``TLSLoadError``); call ``reload_if_changed`` later."""
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self._metrics = metrics or WebhookMetrics()
        self._files_seen = self._file_states()
        self._listening = server_context(self.cert_file, self.key_file)
        self._current = self._listening
        self._listening.sni_callback = self._use_current_context

    @property
    def listening_context(self) -> ssl.SSLContext:
        """The context to give the server socket; it stays the same across reloads."""
        return self._listening

    def _use_current_context(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        current = self._current
        if connection.context is not current:
            connection.context = current

    def _file_states(self) -> tuple[_FileState, _FileState] | None:
        # os.stat follows the ..data symlink Kubernetes swaps, so a rotation changes the inode.
        try:
            cert, key = os.stat(self.cert_file), os.stat(self.key_file)
        except OSError:
            return None  # mid-swap or not mounted yet: look again on the next tick
        return (
            (cert.st_dev, cert.st_ino, cert.st_mtime_ns, cert.st_size),
            (key.st_dev, key.st_ino, key.st_mtime_ns, key.st_size),
        )

    def reload_if_changed(self) -> bool:
        """Load the pair if the files changed since the last attempt; True if a new pair is live."""
        states = self._file_states()
        if states is None or states == self._files_seen:
            return False
        # Remember the attempt even when it fails, so a bad pair is retried when the files
        # change again rather than logged every tick.
        self._files_seen = states
        try:
            context = server_context(self.cert_file, self.key_file)
        except TLSLoadError as exc:
            self._metrics.tls_reloads.labels("failure").inc()
            log.warning("TLS reload failed; still serving the previous certificate: %s", exc)
            return False
        self._current = context
        self._metrics.tls_reloads.labels("success").inc()
        log.info("TLS certificate reloaded", extra={"cert_file": str(self.cert_file)})
        return True

    async def watch(self, interval_seconds: float = 1.0) -> None:
        """Poll the files until cancelled (two stat calls per tick)."""
        while True:
            await asyncio.sleep(interval_seconds)
            self.reload_if_changed()
