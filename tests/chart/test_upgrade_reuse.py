"""On upgrade, `auto` TLS reuses the certificates already in the cluster (Helm's `lookup`).

`helm template --dry-run=server` renders with a live cluster connection, so `lookup` really asks
the API server; a minimal discovery-capable API server on 127.0.0.1 answers it.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from tests.chart.conftest import CHART, NAMESPACE, RELEASE, Manifests, run_helm

SECRET_NAME = f"{RELEASE}-webhook-tls"
SECRET_PATH = f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET_NAME}"
# Discovery of every kind the chart renders: helm maps each object to a resource before output.
KINDS = {
    "v1": [("secrets", "Secret", True), ("serviceaccounts", "ServiceAccount", True),
           ("services", "Service", True), ("pods", "Pod", True)],
    "apps/v1": [("daemonsets", "DaemonSet", True), ("deployments", "Deployment", True)],
    "rbac.authorization.k8s.io/v1": [("clusterroles", "ClusterRole", False),
                                     ("clusterrolebindings", "ClusterRoleBinding", False),
                                     ("roles", "Role", True),
                                     ("rolebindings", "RoleBinding", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "admissionregistration.k8s.io/v1": [
        ("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", False)
    ],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
}  # fmt: skip


def _discovery() -> dict[str, Any]:
    documents: dict[str, Any] = {
        "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0"},
        "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
    }
    groups = []
    for group_version, kinds in KINDS.items():
        resources = [
            {"name": name, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind,
             "verbs": ["get", "list", "create"]}
            for name, kind, namespaced in kinds
        ]  # fmt: skip
        prefix = "/api" if group_version == "v1" else "/apis"
        documents[f"{prefix}/{group_version}"] = {
            "kind": "APIResourceList",
            "groupVersion": group_version,
            "resources": resources,
        }
        if group_version != "v1":
            group, version = group_version.split("/")
            entry = {"groupVersion": group_version, "version": version}
            groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
    documents["/apis"] = {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    return documents


DISCOVERY = _discovery()


class _ApiServer(ThreadingHTTPServer):
    objects: dict[str, Any]
    requests: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _ApiServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.requests.append(path)
        body = DISCOVERY.get(path) or self.server.objects.get(path)
        status = 200 if body else 404
        if body is None:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[_ApiServer]:
    server = _ApiServer(("127.0.0.1", 0), _Handler)
    server.objects, server.requests = {}, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _render_against(server: _ApiServer, tmp_path: Path) -> Manifests:
    kubeconfig = tmp_path / "kubeconfig"
    cluster = {"server": f"http://127.0.0.1:{server.server_address[1]}"}
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": cluster}],
                "users": [{"name": "fake", "user": {"token": "test"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )
    )
    text = run_helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--skip-tests",
        "--dry-run=server", "--disable-openapi-validation", "--kubeconfig", str(kubeconfig),
    )  # fmt: skip
    return Manifests(d for d in yaml.safe_load_all(text) if d)


def _existing_secret(data: dict[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SECRET_NAME,
            "namespace": NAMESPACE,
            # What a previous install of this release left on it (helm checks ownership).
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {
                "meta.helm.sh/release-name": RELEASE,
                "meta.helm.sh/release-namespace": NAMESPACE,
            },
        },
        "type": "kubernetes.io/tls",
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def _installed_tls() -> dict[str, bytes]:
    ca = trustme.CA()
    leaf = ca.issue_cert(f"gvirtus-webhook.{NAMESPACE}.svc")
    return {
        "ca.crt": ca.cert_pem.bytes(),
        "tls.crt": leaf.cert_chain_pems[0].bytes(),
        "tls.key": leaf.private_key_pem.bytes(),
    }


def test_existing_certificates_are_reused_for_secret_and_ca_bundle(
    api_server: _ApiServer, tmp_path: Path
) -> None:
    installed = _existing_secret(_installed_tls())
    api_server.objects[SECRET_PATH] = installed
    manifests = _render_against(api_server, tmp_path)
    assert SECRET_PATH in api_server.requests
    assert manifests.one("Secret", "webhook")["data"] == installed["data"]
    hook = manifests.one("MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["clientConfig"]["caBundle"] == installed["data"]["ca.crt"]


def test_reused_certificates_keep_the_rollout_checksum_stable(
    api_server: _ApiServer, tmp_path: Path
) -> None:
    api_server.objects[SECRET_PATH] = _existing_secret(_installed_tls())

    def checksum() -> str:
        deployment = _render_against(api_server, tmp_path).one("Deployment", "webhook")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/tls"]
        return value

    assert checksum() == checksum()


def test_an_incomplete_secret_is_replaced_by_new_certificates(
    api_server: _ApiServer, tmp_path: Path
) -> None:
    partial = _installed_tls()
    del partial["ca.crt"]
    api_server.objects[SECRET_PATH] = _existing_secret(partial)
    data = _render_against(api_server, tmp_path).one("Secret", "webhook")["data"]
    assert set(data) == {"ca.crt", "tls.crt", "tls.key"}
    assert base64.b64decode(data["tls.crt"]) != partial["tls.crt"]


def test_a_first_install_asks_for_the_secret_and_generates_certificates(
    api_server: _ApiServer, tmp_path: Path
) -> None:
    manifests = _render_against(api_server, tmp_path)
    assert SECRET_PATH in api_server.requests
    data = manifests.one("Secret", "webhook")["data"]
    hook = manifests.one("MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["clientConfig"]["caBundle"] == data["ca.crt"]


def test_the_first_upgrade_keeps_the_checksum_of_the_install(
    api_server: _ApiServer, tmp_path: Path
) -> None:
    # Install: nothing to look up, so certificates are generated and the Secret is created.
    installed = _render_against(api_server, tmp_path)
    secret = installed.one("Secret", "webhook")
    api_server.objects[SECRET_PATH] = _existing_secret(
        {key: base64.b64decode(value) for key, value in secret["data"].items()}
    )

    upgraded = _render_against(api_server, tmp_path)

    def checksum(manifests: Manifests) -> str:
        deployment = manifests.one("Deployment", "webhook")
        value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/tls"]
        return value

    assert upgraded.one("Secret", "webhook")["data"] == secret["data"]
    assert checksum(upgraded) == checksum(installed)
