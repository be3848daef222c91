"""A real Kubernetes control plane on loopback, as envtest builds one: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, no kubelet.

- Binaries: ``$KUBEBUILDER_ASSETS/<name>`` when present, else ``.tools/bin/<name>`` (``make tools``
  builds them from the Go module in ``ci/tools``). A missing binary is an error, never a skip.
- Certificates are generated here (trustme): one CA signs the API server's serving certificate
  and the client certificates of the admin (group ``system:masters``), the controller-manager and
  the scheduler, so each component authenticates as itself and RBAC applies to all of them.
- The API server authorizes with ``Node,RBAC``, runs the default admission plugins (the webhook
  plugins included), issues ServiceAccount tokens (TokenRequest) signed with a key generated here,
  and routes webhook calls to a Service's endpoints (``--enable-aggregator-routing``) rather than
  to its ClusterIP, which nothing on this machine serves.
- Every component logs to a file in the work directory; a component that exits or never becomes
  healthy fails start-up with the tail of its log. ``stop()`` kills them all (also at exit).
- Concurrent runs on one machine do not collide: every port is a free one, and start-up is retried
  with fresh ports when another process took one in between.
- With ``real_nodes`` (the real-node tier, ``tests/node``), the API server listens on ``address``
  where pods and kubelets reach it, publishes itself as the ``kubernetes`` Service's endpoint,
  authenticates to kubelets with a client certificate, and the controller-manager runs its
  node-lifecycle controller, because real kubelets report the nodes' state.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trustme
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"  # the first address of SERVICE_CIDR
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
# A loaded 2-core machine can take tens of seconds to bootstrap the API server.
START_TIMEOUT = 120.0

# The controllers this test cluster needs. Node lifecycle is left out on purpose: no kubelet runs,
# so it would mark every node unreachable; nodes are kept Ready by the fixture instead (kube.py).
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "statefulset-controller",
    "job-controller",
    "cronjob-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "garbage-collector-controller",
    "pod-garbage-collector-controller",
    "disruption-controller",
    "resourcequota-controller",
    "root-ca-certificate-publisher-controller",
    "ttl-after-finished-controller",
    "clusterrole-aggregation-controller",
)


class ControlPlaneError(Exception):
    """A component is missing, exited or did not become healthy; the message says which and why."""


def binary(name: str) -> Path:
    """``$KUBEBUILDER_ASSETS/<name>`` if present, else ``.tools/bin/<name>``."""
    assets = os.environ.get("KUBEBUILDER_ASSETS", "")
    if assets and (Path(assets) / name).is_file():
        return Path(assets) / name
    if (TOOLS_BIN / name).is_file():
        return TOOLS_BIN / name
    where = f"$KUBEBUILDER_ASSETS ({assets})" if assets else "$KUBEBUILDER_ASSETS (unset)"
    raise ControlPlaneError(f"{name} is in neither {where} nor {TOOLS_BIN}: run `make tools`")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def exited(self) -> bool:
        return self.process.poll() is not None

    def failure(self, problem: str) -> ControlPlaneError:
        return ControlPlaneError(
            f"{self.name} {problem}\n--- last lines of {self.log_file} ---\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_component(name: str, args: Sequence[str], workdir: Path) -> Component:
    log_file = workdir / f"{name}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [str(binary(name)), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=True,  # its own process group: killed as a group, never ours
        )
    return Component(name, process, log_file)


def wait_healthy(
    component: Component, probe: Callable[[], bool], what: str, timeout: float = START_TIMEOUT
) -> float:
    """Poll ``probe`` until true; the seconds it took. Fails fast when the component exits."""
    started = time.monotonic()
    while True:
        if component.exited():
            raise component.failure(f"exited with code {component.process.returncode}")
        with contextlib.suppress(httpx.HTTPError, OSError):
            if probe():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise component.failure(f"not {what} after {timeout:.0f}s")
        time.sleep(0.1)


def kubeconfig_text(server: str, ca_pem: str, user: dict[str, str], name: str) -> str:
    """A kubeconfig with everything inline (``user``: client cert and key, or a token)."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    credentials: dict[str, str] = {}
    if "token" in user:
        credentials["token"] = user["token"]
    else:
        credentials["client-certificate-data"] = b64(user["cert"])
        credentials["client-key-data"] = b64(user["key"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [{"name": name, "user": credentials}],
        "contexts": [{"name": name, "context": {"cluster": "test", "user": name}}],
        "current-context": name,
    }
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class ControlPlane:
    """Start with ``start()``; ``stop()`` kills every component (safe to call at any point)."""

    workdir: Path
    address: str = "127.0.0.1"
    real_nodes: bool = False
    components: list[Component] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    api_port: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name="gvirtus-kai test cluster")
        self.ca_file = self.workdir / "ca.crt"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.ca_pem = self.ca.cert_pem.bytes().decode()

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.api_port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    # -- start-up -----------------------------------------------------------------------------

    def start(self, attempts: int = 3, stop_at_exit: bool = True) -> ControlPlane:
        """Start every component; a port taken by someone else between choosing it and binding
        it (other test runs share the machine) is retried with fresh ports. ``stop_at_exit``
        False leaves the components running after this process ends (``make cluster``)."""
        started = time.monotonic()
        if stop_at_exit:  # also when the test process ends without its finalizers
            atexit.register(self.stop)
        self._write_keys()
        for attempt in range(1, attempts + 1):
            try:
                self._start_etcd()
                self._start_apiserver()
                self._start_controller_manager()
                self._start_scheduler()
                break
            except ControlPlaneError as error:
                self.stop()
                if "address already in use" not in str(error) or attempt == attempts:
                    raise
                shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
            except BaseException:
                self.stop()
                raise
        self.timings["total"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()
        self.components.clear()

    def admin_tls_context(self) -> ssl.SSLContext:
        """For HTTP clients other than kubeconfig readers: trusts the CA, presents the admin's
        client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.workdir / "admin.crt"), str(self.workdir / "admin.key"))
        return context

    def client_kubeconfig(self, name: str, user: str, group: str | None = None) -> Path:
        """A kubeconfig authenticating as ``user`` (certificate CN) in ``group`` (O); the
        certificate and key are also written next to it as ``<name>.crt``/``<name>.key``."""
        cert = self.ca.issue_cert(name, common_name=user, organization_name=group)
        cert.cert_chain_pems[0].write_to_path(str(self.workdir / f"{name}.crt"))
        cert.private_key_pem.write_to_path(str(self.workdir / f"{name}.key"))
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(
            kubeconfig_text(
                self.server,
                self.ca_pem,
                {
                    "cert": cert.cert_chain_pems[0].bytes().decode(),
                    "key": cert.private_key_pem.bytes().decode(),
                },
                name,
            )
        )
        return path

    def serving_cert(self, name: str, *names: str) -> tuple[Path, Path]:
        """A certificate and key signed by the cluster CA for ``names`` (host names or IPs),
        written as ``<name>.crt``/``<name>.key``."""
        cert = self.ca.issue_cert(*names, common_name=name)
        crt, key = self.workdir / f"{name}.crt", self.workdir / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(crt))
        cert.private_key_pem.write_to_path(str(key))
        return crt, key

    def _write_keys(self) -> None:
        serving = self.ca.issue_cert(
            "127.0.0.1",
            self.address,
            KUBERNETES_SERVICE_IP,
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            common_name="kube-apiserver",
        )
        serving.cert_chain_pems[0].write_to_path(str(self.workdir / "apiserver.crt"))
        serving.private_key_pem.write_to_path(str(self.workdir / "apiserver.key"))
        proxy = self.ca.issue_cert("front-proxy-client", common_name="front-proxy-client")
        proxy.cert_chain_pems[0].write_to_path(str(self.workdir / "front-proxy-client.crt"))
        proxy.private_key_pem.write_to_path(str(self.workdir / "front-proxy-client.key"))
        # ServiceAccount tokens are signed with this key and verified with its public half.
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.workdir / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (self.workdir / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        etcd = start_component(
            "etcd",
            [
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # throw-away data: no fsync keeps writes fast on a busy disk
                "--log-level=warn",
            ],
            self.workdir,
        )
        self.components.append(etcd)

        def healthy() -> bool:
            answer = httpx.get(f"{self.etcd_url}/health", timeout=2.0)
            return answer.status_code == 200 and answer.json().get("health") == "true"

        self.timings["etcd"] = wait_healthy(etcd, healthy, "healthy")

    def _start_apiserver(self) -> None:
        self.api_port = free_port()
        admin = self.client_kubeconfig("admin", "admin", "system:masters")
        assert admin == self.admin_kubeconfig
        w = self.workdir
        apiserver = start_component(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={self.api_port}",
                f"--cert-dir={w / 'apiserver-certs'}",
                f"--tls-cert-file={w / 'apiserver.crt'}",
                f"--tls-private-key-file={w / 'apiserver.key'}",
                f"--client-ca-file={self.ca_file}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={w / 'sa.pub'}",
                f"--service-account-signing-key-file={w / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Webhooks are dialled at their Service's endpoint (a pod IP), not the ClusterIP.
                "--enable-aggregator-routing=true",
                *self._node_flags(),
                # The front-proxy identity, as kubeadm sets it: the controller-manager and the
                # scheduler read this CA to authenticate requests to their own /healthz.
                f"--requestheader-client-ca-file={self.ca_file}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={w / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={w / 'front-proxy-client.key'}",
                "--allow-privileged=true",
                "--profiling=false",
            ],
            w,
        )
        self.components.append(apiserver)
        context = ssl.create_default_context(cafile=str(self.ca_file))
        cert = self.ca.issue_cert(
            "readyz", common_name="readyz", organization_name="system:masters"
        )
        cert_file, key_file = w / "readyz.crt", w / "readyz.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        context.load_cert_chain(str(cert_file), str(key_file))
        last: list[str] = []

        def ready() -> bool:
            answer = httpx.get(f"{self.server}/readyz?verbose", verify=context, timeout=5.0)
            last[:] = [line for line in answer.text.splitlines() if "failed" in line]
            return answer.status_code == 200

        try:
            self.timings["kube-apiserver"] = wait_healthy(apiserver, ready, "ready (/readyz)")
        except ControlPlaneError as error:
            checks = "\n".join(last)
            raise ControlPlaneError(f"{error}\n--- failing /readyz checks ---\n{checks}") from None

    def _node_flags(self) -> list[str]:
        if not self.real_nodes:
            # No kubelet or kube-proxy: nothing uses endpoints of the 'kubernetes' Service.
            return ["--endpoint-reconciler-type=none"]
        self.client_kubeconfig("kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        w = self.workdir
        return [
            "--endpoint-reconciler-type=lease",
            f"--kubelet-client-certificate={w / 'kubelet-client.crt'}",
            f"--kubelet-client-key={w / 'kubelet-client.key'}",
            f"--kubelet-certificate-authority={self.ca_file}",
            "--kubelet-preferred-address-types=InternalIP",
        ]

    def _component_healthz(self, component: Component, port: int) -> float:
        def healthy() -> bool:
            answer = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=5.0)  # noqa: S501
            return answer.status_code == 200

        return wait_healthy(component, healthy, "healthy (/healthz)")

    def _start_controller_manager(self) -> None:
        kubeconfig = self.client_kubeconfig("controller-manager", "system:kube-controller-manager")
        port = free_port()
        w = self.workdir
        manager = start_component(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={w / 'controller-manager-certs'}",
                "--leader-elect=false",
                # Each controller acts as its own ServiceAccount, with the bootstrap RBAC roles.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={w / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=" + ",".join(self._controllers()),
                "--profiling=false",
            ],
            w,
        )
        self.components.append(manager)
        self.timings["kube-controller-manager"] = self._component_healthz(manager, port)

    def _controllers(self) -> tuple[str, ...]:
        return (*CONTROLLERS, "node-lifecycle-controller") if self.real_nodes else CONTROLLERS

    def _start_scheduler(self) -> None:
        kubeconfig = self.client_kubeconfig("scheduler", "system:kube-scheduler")
        port = free_port()
        scheduler = start_component(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--leader-elect=false",
                "--profiling=false",
            ],
            self.workdir,
        )
        self.components.append(scheduler)
        self.timings["kube-scheduler"] = self._component_healthz(scheduler, port)

    # -- identities ---------------------------------------------------------------------------

    def kubeconfig_for_token(self, token: str, name: str) -> Path:
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(kubeconfig_text(self.server, self.ca_pem, {"token": token}, name))
        return path
