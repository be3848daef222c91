"""Webhook TLS in its three modes; in `auto` the caBundle verifies the served certificate."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
from pathlib import Path

import pytest

from tests.chart.conftest import (
    NAMESPACE,
    HelmError,
    Manifests,
    container,
    pod_spec,
    render,
    render_notes,
)

SERVICE_NAMES = [
    "gvirtus-webhook",
    f"gvirtus-webhook.{NAMESPACE}",
    f"gvirtus-webhook.{NAMESPACE}.svc",
    f"gvirtus-webhook.{NAMESPACE}.svc.cluster.local",
]


def _ca_bundle(manifests: Manifests) -> str | None:
    hook = manifests.one("MutatingWebhookConfiguration")["webhooks"][0]
    bundle: str | None = hook["clientConfig"].get("caBundle")
    return bundle


def _tls_secret(manifests: Manifests) -> dict[str, str]:
    data: dict[str, str] = manifests.one("Secret", "webhook")["data"]
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


async def _handshake(cert_pem: str, key_pem: str, ca_pem: str, server_name: str, tmp: Path) -> None:
    """A TLS server with the Secret's cert on 127.0.0.1, a client trusting only ``ca_pem``."""
    (tmp / "tls.crt").write_text(cert_pem)
    (tmp / "tls.key").write_text(key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp / "tls.crt", tmp / "tls.key")
    client_ctx = ssl.create_default_context(cadata=ca_pem)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=server_name),
            timeout=30,
        )
        assert await reader.read() == b"ok"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("server_name", SERVICE_NAMES)
async def test_auto_ca_bundle_verifies_the_serving_certificate_for(
    server_name: str, tmp_path: Path
) -> None:
    manifests = render()
    secret = _tls_secret(manifests)
    bundle = _ca_bundle(manifests)
    assert bundle is not None
    ca_pem = base64.b64decode(bundle).decode()
    await _handshake(secret["tls.crt"], secret["tls.key"], ca_pem, server_name, tmp_path)


async def test_auto_certificate_is_rejected_for_a_name_outside_the_service(
    tmp_path: Path,
) -> None:
    manifests = render()
    secret = _tls_secret(manifests)
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        await _handshake(
            secret["tls.crt"],
            secret["tls.key"],
            secret["ca.crt"],
            "gvirtus-webhook.other.svc",
            tmp_path,
        )


async def test_a_certificate_from_another_render_is_not_trusted(tmp_path: Path) -> None:
    # A different value set means a separate render, hence a freshly generated CA.
    other = _tls_secret(render(values={"webhook.logLevel": "debug"}))
    ca_pem = base64.b64decode(_ca_bundle(render()) or "").decode()
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(other["tls.crt"], other["tls.key"], ca_pem, SERVICE_NAMES[2], tmp_path)


def test_auto_secret_ca_and_deployment_checksum_agree() -> None:
    manifests = render()
    secret = manifests.one("Secret", "webhook")
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    assert _ca_bundle(manifests) == secret["data"]["ca.crt"]
    tls = _tls_secret(manifests)
    annotations = manifests.one("Deployment", "webhook")["spec"]["template"]["metadata"][
        "annotations"
    ]
    expected = hashlib.sha256(json.dumps(tls, sort_keys=True, separators=(",", ":")).encode())
    assert annotations["checksum/tls"] == expected.hexdigest()


def test_webhook_mounts_the_tls_secret_where_its_settings_point() -> None:
    manifests = render()
    deployment = manifests.one("Deployment", "webhook")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert (
        volumes["tls"]["secret"]["secretName"]
        == manifests.one("Secret", "webhook")["metadata"]["name"]
    )
    mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
    assert mounts["tls"] == {"name": "tls", "mountPath": "/tls", "readOnly": True}


def test_cert_manager_mode_builds_a_ca_chain_and_injects_the_ca() -> None:
    manifests = render("cert-manager-values.yaml")
    assert not manifests.of_kind("Secret")
    issuers = {m["metadata"]["name"]: m["spec"] for m in manifests.of_kind("Issuer")}
    certificates = {m["metadata"]["name"]: m["spec"] for m in manifests.of_kind("Certificate")}
    assert issuers == {
        "gvirtus-kai-selfsigned": {"selfSigned": {}},
        "gvirtus-kai-ca": {"ca": {"secretName": "gvirtus-kai-ca"}},
    }
    ca = certificates["gvirtus-kai-ca"]
    assert ca["isCA"] is True
    assert ca["issuerRef"]["name"] == "gvirtus-kai-selfsigned"
    serving = certificates["gvirtus-kai-webhook"]
    assert serving["dnsNames"] == SERVICE_NAMES
    assert serving["issuerRef"] == {
        "name": "gvirtus-kai-ca",
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert "server auth" in serving["usages"]
    secret_name = pod_spec(manifests.one("Deployment", "webhook"))["volumes"][0]["secret"][
        "secretName"
    ]
    assert serving["secretName"] == secret_name
    webhook_config = manifests.one("MutatingWebhookConfiguration")
    assert webhook_config["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{NAMESPACE}/gvirtus-kai-webhook"
    }
    assert _ca_bundle(manifests) is None


def test_cert_manager_mode_with_a_given_issuer_creates_only_the_serving_certificate() -> None:
    manifests = render(
        "cert-manager-values.yaml",
        {
            "webhook.tls.certManager.issuerRef": {
                "name": "corp-ca",
                "kind": "ClusterIssuer",
                "group": "cert-manager.io",
            }
        },
    )
    assert not manifests.of_kind("Issuer")
    (certificate,) = manifests.of_kind("Certificate")
    assert certificate["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_cert_manager_mode_does_not_roll_pods_on_render() -> None:
    annotations = (
        render("cert-manager-values.yaml")
        .one("Deployment", "webhook")["spec"]["template"]["metadata"]
        .get("annotations")
        or {}
    )
    assert "checksum/tls" not in annotations


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({"webhook.tls.secret.caBundle": "Zm9v"}, "/webhook/tls/secret/name"),
        ({"webhook.tls.secret.name": "my-tls"}, "/webhook/tls/secret/caBundle"),
    ],
)
def test_secret_mode_requires_secret_name_and_ca_bundle(
    values: dict[str, str], missing: str
) -> None:
    with pytest.raises(HelmError) as failure:
        render(values={"webhook.tls.mode": "secret", **values})
    assert missing in str(failure.value)


def test_secret_mode_uses_the_given_secret_and_ca_bundle() -> None:
    bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...\n").decode()
    manifests = render(
        values={
            "webhook.tls.mode": "secret",
            "webhook.tls.secret.name": "my-tls",
            "webhook.tls.secret.caBundle": bundle,
        }
    )
    assert not manifests.of_kind("Secret")
    assert not manifests.of_kind("Certificate")
    assert _ca_bundle(manifests) == bundle
    volumes = pod_spec(manifests.one("Deployment", "webhook"))["volumes"]
    assert volumes[0]["secret"]["secretName"] == "my-tls"
    test_args = container(manifests.one("Pod", "helm-test"))["command"]
    assert test_args[-2:] == ["--ca-b64", bundle]


EXTERNAL_ISSUER = {
    "webhook.tls.mode": "cert-manager",
    "webhook.tls.certManager.issuerRef": {
        "name": "corp-vault",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    },
}


def test_notes_tell_an_external_issuer_user_the_secret_needs_ca_crt() -> None:
    notes = render_notes(EXTERNAL_ISSUER)
    assert 'your ClusterIssuer "corp-vault"' in notes
    assert "read ca.crt from Secret gvirtus-kai-webhook-tls" in notes
    check = f"kubectl -n {NAMESPACE} get secret gvirtus-kai-webhook-tls"
    assert check + " -o jsonpath='{.data.ca\\.crt}'" in notes


def test_notes_say_what_a_missing_ca_crt_does_under_the_failure_policy() -> None:
    assert "labelled pods are rejected" in render_notes(EXTERNAL_ISSUER)
    ignoring = render_notes({**EXTERNAL_ISSUER, "webhook.failurePolicy": "Ignore"})
    assert "labelled pods are created without GVirtuS" in ignoring


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="auto"),
        pytest.param({"webhook.tls.mode": "cert-manager"}, id="cert-manager-own-ca"),
    ],
)
def test_notes_skip_the_ca_crt_advice_when_the_chart_owns_the_ca(values: dict[str, str]) -> None:
    notes = render_notes(values)
    assert "helm test gvirtus-kai" in notes
    assert "ca.crt" not in notes
