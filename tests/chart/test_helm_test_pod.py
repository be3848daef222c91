"""The `helm test` pod: present, wired to the chart's CA, and its check fails unless it mutates."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.chart.conftest import CHART, NAMESPACE, container, env_of, pod_spec, render

SCRIPT = CHART / "files" / "webhook-check.py"


def test_test_pod_is_a_helm_test_hook_running_the_check_script() -> None:
    pod = render().one("Pod", "helm-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod_spec(pod)["restartPolicy"] == "Never"
    command = container(pod)["command"]
    assert command[:3] == ["python3", "-c", SCRIPT.read_text()]
    assert command[3:] == [
        f"https://gvirtus-webhook.{NAMESPACE}.svc:443/mutate",
        "gvirtus.io/enabled",
        "nvidia.com/gpu",
        "--ca-file",
        "/ca/ca.crt",
    ]


@pytest.mark.parametrize(
    ("scenario", "dns_placement"),
    [
        (None, False),
        ("controller-disabled-values.yaml", True),
        ("sed-strategy-values.yaml", False),  # sed pods are gated for the controller too
    ],
)
def test_test_pod_accepts_a_no_backend_refusal_only_where_pods_are_pinned_by_dns(
    scenario: str | None, dns_placement: bool
) -> None:
    manifests = render(scenario)
    command = container(manifests.one("Pod", "helm-test"))["command"]
    if not dns_placement:
        assert "--dns-placement" not in command
        return
    backend_host = env_of(manifests.one("Deployment", "webhook"))["GVIRTUS_KAI_BACKEND_HOST"]
    flag = command.index("--dns-placement")
    assert (
        command[flag + 1]
        == backend_host
        == f"gvirtus-backend-headless.{NAMESPACE}.svc.cluster.local"
    )


def test_test_pod_trusts_the_ca_from_the_webhook_tls_secret() -> None:
    manifests = render()
    pod = manifests.one("Pod", "helm-test")
    (volume,) = pod_spec(pod)["volumes"]
    assert volume["secret"] == {
        "secretName": manifests.one("Secret", "webhook")["metadata"]["name"],
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert container(pod)["volumeMounts"] == [{"name": "ca", "mountPath": "/ca", "readOnly": True}]


def test_test_pod_uses_the_webhook_image_unless_told_otherwise() -> None:
    manifests = render()
    webhook_image = container(manifests.one("Deployment", "webhook"))["image"]
    assert container(manifests.one("Pod", "helm-test"))["image"] == webhook_image
    custom = render(values={"tests.image": {"repository": "python", "tag": "3.12-slim"}})
    assert container(custom.one("Pod", "helm-test"))["image"] == "python:3.12-slim"


def test_no_test_pod_without_the_webhook() -> None:
    assert not render(values={"webhook.enabled": False}).of_kind("Pod")


# --- the check script against a real HTTPS server ---------------------------------------------


class _Webhook(BaseHTTPRequestHandler):
    """Answers an AdmissionReview the way the test configures on the server object."""

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer: Any = self.server.answer(review)  # type: ignore[attr-defined]
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def webhook(ca: trustme.CA) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _response(review: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], **fields},
    }


def _mutating(review: dict[str, Any]) -> dict[str, Any]:
    patch = [
        {"op": "add", "path": "/metadata/annotations", "value": {"gvirtus.io/properties": "{}"}}
    ]
    return _response(
        review,
        allowed=True,
        patchType="JSONPatch",
        patch=base64.b64encode(json.dumps(patch).encode()).decode(),
    )


def _run_check(
    server: ThreadingHTTPServer, ca_pem: bytes, tmp: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    (tmp / "ca.crt").write_bytes(ca_pem)
    url = f"https://localhost:{server.server_address[1]}/mutate"
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            url,
            "gvirtus.io/enabled",
            "nvidia.com/gpu",
            "--ca-file",
            str(tmp / "ca.crt"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_passes_when_the_webhook_mutates(
    webhook: ThreadingHTTPServer, ca: trustme.CA, tmp_path: Path
) -> None:
    seen: list[dict[str, Any]] = []

    def record_and_mutate(review: dict[str, Any]) -> dict[str, Any]:
        seen.append(review)
        return _mutating(review)

    webhook.answer = record_and_mutate  # type: ignore[attr-defined]
    result = _run_check(webhook, ca.cert_pem.bytes(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout
    request = seen[0]["request"]
    assert request["operation"] == "CREATE"
    assert request["object"]["metadata"]["labels"] == {"gvirtus.io/enabled": "true"}
    limits = request["object"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/gpu": "1"}


def test_check_fails_when_the_pod_is_allowed_without_a_patch(
    webhook: ThreadingHTTPServer, ca: trustme.CA, tmp_path: Path
) -> None:
    webhook.answer = lambda review: _response(review, allowed=True)  # type: ignore[attr-defined]
    result = _run_check(webhook, ca.cert_pem.bytes(), tmp_path)
    assert result.returncode == 1
    assert "no JSONPatch" in result.stderr


def test_check_fails_when_the_pod_is_denied(
    webhook: ThreadingHTTPServer, ca: trustme.CA, tmp_path: Path
) -> None:
    webhook.answer = lambda review: _response(  # type: ignore[attr-defined]
        review, allowed=False, status={"code": 403, "message": "backend lookup failed"}
    )
    result = _run_check(webhook, ca.cert_pem.bytes(), tmp_path)
    assert result.returncode == 1
    assert "backend lookup failed" in result.stderr


HEADLESS = "gvirtus-backend-headless.gvirtus-system.svc.cluster.local"


def _refusing(message: str) -> Any:
    return lambda review: _response(review, allowed=False, status={"code": 403, "message": message})


def test_check_passes_a_refusal_naming_the_backend_service_under_dns_placement(
    webhook: ThreadingHTTPServer, ca: trustme.CA, tmp_path: Path
) -> None:
    webhook.answer = _refusing(f"no ready GVirtuS backend behind {HEADLESS}")  # type: ignore[attr-defined]
    result = _run_check(webhook, ca.cert_pem.bytes(), tmp_path, "--dns-placement", HEADLESS)
    assert result.returncode == 0, result.stderr
    assert f"no backend behind {HEADLESS} yet" in result.stdout


def test_check_fails_a_refusal_for_another_reason_under_dns_placement(
    webhook: ThreadingHTTPServer, ca: trustme.CA, tmp_path: Path
) -> None:
    webhook.answer = _refusing("container 'app' has no explicit command")  # type: ignore[attr-defined]
    result = _run_check(webhook, ca.cert_pem.bytes(), tmp_path, "--dns-placement", HEADLESS)
    assert result.returncode == 1
    assert "no explicit command" in result.stderr


def test_check_fails_a_refusal_naming_the_backend_without_dns_placement(
    webhook: ThreadingHTTPServer, ca: trustme.CA, tmp_path: Path
) -> None:
    # With the controller, the pod is gated and never looked up: a refusal is a fault.
    webhook.answer = _refusing(f"no ready GVirtuS backend behind {HEADLESS}")  # type: ignore[attr-defined]
    result = _run_check(webhook, ca.cert_pem.bytes(), tmp_path)
    assert result.returncode == 1
    assert HEADLESS in result.stderr


def test_check_fails_when_the_answer_does_not_echo_the_uid(
    webhook: ThreadingHTTPServer, ca: trustme.CA, tmp_path: Path
) -> None:
    webhook.answer = lambda review: _mutating({"request": {"uid": "other"}})  # type: ignore[attr-defined]
    result = _run_check(webhook, ca.cert_pem.bytes(), tmp_path)
    assert result.returncode == 1
    assert "does not echo" in result.stderr


def test_check_fails_when_the_server_is_not_signed_by_the_given_ca(
    webhook: ThreadingHTTPServer, tmp_path: Path
) -> None:
    webhook.answer = _mutating  # type: ignore[attr-defined]
    result = _run_check(webhook, trustme.CA().cert_pem.bytes(), tmp_path)
    assert result.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
