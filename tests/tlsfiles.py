"""Test certificates (trustme) laid out on disk the way the kubelet mounts a TLS Secret.

The kubelet's atomic writer keeps the real files in a timestamped directory, points ``..data`` at
it and exposes each key as a symlink through ``..data``; an update writes a new directory and
swaps ``..data`` with one rename. ``SecretVolume`` reproduces that, so reload tests exercise the
same file-system events a pod sees.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import warnings
from pathlib import Path

import trustme

SERVICE_DNS_NAMES = (
    "gvirtus-webhook",
    "gvirtus-webhook.gvirtus-system",
    "gvirtus-webhook.gvirtus-system.svc",
    "gvirtus-webhook.gvirtus-system.svc.cluster.local",
)
# The name the API server verifies when it calls a webhook through its Service.
VERIFIED_NAME = "gvirtus-webhook.gvirtus-system.svc"


def serving_cert(ca: trustme.CA) -> trustme.LeafCert:
    """A serving certificate for the webhook Service names, signed by ``ca``."""
    return ca.issue_cert(*SERVICE_DNS_NAMES)


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` and verifies host names, like the API server."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.load_verify_locations(cadata=ca.cert_pem.bytes().decode())
    return context


def old_protocol_client(ca: trustme.CA, newest: ssl.TLSVersion) -> ssl.SSLContext:
    """A client willing to speak TLS 1.0 up to ``newest`` (old versions need security level 0)."""
    context = client_context(ca)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated is the point here
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = newest
    return context


class SecretVolume:
    """A directory with ``tls.crt``/``tls.key`` symlinks through a swappable ``..data`` link."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @property
    def cert_file(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.root / "tls.key"

    def write(self, cert: trustme.LeafCert) -> None:
        self.write_files(
            {
                "tls.crt": cert.cert_chain_pems[0].bytes(),
                "tls.key": cert.private_key_pem.bytes(),
            }
        )

    def write_files(self, files: dict[str, bytes]) -> None:
        """Publish a new set of files with one atomic rename, as the kubelet does."""
        generation = Path(tempfile.mkdtemp(prefix="..", dir=self.root))
        for name, content in files.items():
            (generation / name).write_bytes(content)
        data_link = self.root / "..data"
        previous = data_link.resolve() if data_link.is_symlink() else None
        staging = self.root / "..data_tmp"
        staging.symlink_to(generation.name)
        os.replace(staging, data_link)
        for name in files:
            user_link = self.root / name
            if not user_link.is_symlink():
                user_link.symlink_to(Path("..data") / name)
        if previous is not None:
            shutil.rmtree(previous)
