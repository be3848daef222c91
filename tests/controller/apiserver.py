"""A minimal real control plane for the controller's loop tests: etcd and kube-apiserver.

Binaries come from ``$KUBEBUILDER_ASSETS`` (the envtest convention) or ``.tools/bin``. The admin
talks to it with a client certificate in ``system:masters``.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trustme
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def binary(name: str) -> Path:
    folders = [os.environ.get("KUBEBUILDER_ASSETS", ""), str(REPO_ROOT / ".tools" / "bin")]
    for folder in filter(None, folders):
        path = Path(folder) / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} not found in $KUBEBUILDER_ASSETS or .tools/bin (make tools)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ApiServer:
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    kubeconfig: Path = field(init=False)

    def start(self) -> ApiServer:
        ca = trustme.CA()
        ca_file = self.workdir / "ca.crt"
        ca.cert_pem.write_to_path(str(ca_file))
        serving = ca.issue_cert("127.0.0.1", "localhost")
        serving.cert_chain_pems[0].write_to_path(str(self.workdir / "apiserver.crt"))
        serving.private_key_pem.write_to_path(str(self.workdir / "apiserver.key"))
        # ServiceAccount tokens are signed with this key and verified with its public half.
        key = ec.generate_private_key(ec.SECP256R1())
        (self.workdir / "sa.key").write_bytes(
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        (self.workdir / "sa.pub").write_bytes(
            key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        )
        self._wait(lambda: httpx.get(f"{etcd_url}/health", timeout=2).status_code == 200)
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--tls-cert-file={self.workdir / 'apiserver.crt'}",
            f"--tls-private-key-file={self.workdir / 'apiserver.key'}",
            f"--client-ca-file={ca_file}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.workdir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.workdir / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--endpoint-reconciler-type=none",
        )
        admin = ca.issue_cert("admin", common_name="admin", organization_name="system:masters")
        cert_file, key_file = self.workdir / "admin.crt", self.workdir / "admin.key"
        admin.cert_chain_pems[0].write_to_path(str(cert_file))
        admin.private_key_pem.write_to_path(str(key_file))
        server = f"https://127.0.0.1:{api_port}"
        context = ssl.create_default_context(cafile=str(ca_file))
        context.load_cert_chain(str(cert_file), str(key_file))
        self._wait(
            lambda: httpx.get(f"{server}/readyz", verify=context, timeout=5).status_code == 200
        )

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": server, "certificate-authority-data": b64(ca_file)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64(cert_file),
                        "client-key-data": b64(key_file),
                    },
                }
            ],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
            "current-context": "test",
        }
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(config))
        return self

    def _spawn(self, name: str, *args: str) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes.append(
            subprocess.Popen([binary(name), *args], stdout=log, stderr=subprocess.STDOUT)
        )

    def _wait(self, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in self.processes):
                raise RuntimeError(f"a control-plane process exited: see {self.workdir}")
            try:
                if ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"control plane not ready after {timeout}s: see {self.workdir}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)


def token_kubeconfig(admin: Path, token: str, path: Path) -> Path:
    """``admin``'s kubeconfig with a bearer token instead of the admin certificate."""
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path.write_text(yaml.safe_dump(config))
    return path
