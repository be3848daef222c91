"""``make demo``: the real webhook over TLS and DNS, mutating the pods in examples/.

Everything runs on this machine: a throwaway CA and serving certificate, a DNS server on 127.0.0.1
that answers the headless backend Service with three ready backend pods, and the
``gvirtus-webhook`` console script with the chart's default placement (``controller``). Each
example is sent to ``/mutate`` the way the API server would send the pod it is about to create;
the decision, the warnings, the mutated pod (as a diff) and the DNS queries it cost are printed:
every pod, mount or sed, is gated for the placement controller without a lookup (the sed wrapper
reads the address the controller will write, from a downward-API variable). Then no backend is
ready: gated pods are still admitted, to wait. Last, the controller disabled (``dns`` placement):
both pods are pinned at admission to a backend pod found by DNS, and refused while none is ready;
and the offline injector. Everything started is stopped at the end.
"""

from __future__ import annotations

import base64
import difflib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import trustme
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the loopback DNS server and TLS helpers live with the tests

from tests.dnsserver import LoopbackDnsServer  # noqa: E402
from tests.tlsfiles import VERIFIED_NAME, SecretVolume, client_context, serving_cert  # noqa: E402
from tests.webhookproc import (  # noqa: E402
    BACKEND_HOST,
    WebhookProcess,
    api_server_client,
    start_webhook,
)

EXAMPLES = ROOT / "examples"
# Ready backend pods behind the headless Service (their pod IPs; GVirtuS listens on 9999).
BACKEND_PODS = ("10.244.1.7", "10.244.2.9", "10.244.3.4")
BACKEND_ADDRESS = BACKEND_PODS[0]  # what the offline injector is given
DNS_TTL_SECONDS = 1  # short, so a later step can show what happens when no backend is ready
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
COLOUR = sys.stdout.isatty()


def style(text: str, code: str) -> str:
    return f"\033[{code}m{text}\033[0m" if COLOUR else text


def heading(text: str) -> None:
    print()
    print(style(f"== {text} ", "1") + style("=" * max(0, 76 - len(text)), "1"))


def pod_for(document: dict[str, Any]) -> dict[str, Any]:
    """The pod the API server is asked to create for a manifest document.

    A workload's controller creates pods from its template, named ``<owner>-<suffix>`` with only a
    generateName at admission time, in the workload's namespace.
    """
    if document["kind"] == "Pod":
        return document
    if document["kind"] not in WORKLOAD_KINDS:
        raise ValueError(f"the demo does not turn a {document['kind']} into pods")
    template = document["spec"]["template"]
    metadata = dict(template.get("metadata") or {})
    metadata["generateName"] = f"{document['metadata']['name']}-7d4b9c8f6-"
    metadata["namespace"] = document["metadata"].get("namespace", "default")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def admission_review(pod: dict[str, Any]) -> dict[str, Any]:
    pod_kind = {"group": "", "version": "v1", "kind": "Pod"}
    pods = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": pod_kind,
            "resource": pods,
            "requestKind": pod_kind,
            "requestResource": pods,
            "name": pod["metadata"].get("name", ""),
            "namespace": pod["metadata"].get("namespace", "default"),
            "operation": "CREATE",
            "userInfo": {"username": "demo", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


class _ReadableDumper(yaml.SafeDumper):
    """Multi-line strings (the sed wrapper script) as literal blocks, as a person writes them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReadableDumper.add_representer(str, _represent_str)


def as_yaml(document: Any) -> list[str]:
    text = yaml.dump(document, Dumper=_ReadableDumper, sort_keys=False, width=100)
    return text.splitlines(keepends=True)


def print_diff(before: dict[str, Any], after: dict[str, Any], name: str) -> None:
    diff = difflib.unified_diff(
        as_yaml(before), as_yaml(after), f"{name} (as submitted)", f"{name} (as admitted)", n=2
    )
    for line in diff:
        text = line.rstrip("\n")
        if line.startswith("+") and not line.startswith("+++"):
            text = style(text, "32")
        elif line.startswith("-") and not line.startswith("---"):
            text = style(text, "31")
        elif line.startswith("@@"):
            text = style(text, "36")
        print(text)


def submit(
    webhook: WebhookProcess, client: httpx.Client, pod: dict[str, Any], dns: LoopbackDnsServer
) -> None:
    queries = dns.query_count(BACKEND_HOST)
    review = admission_review(pod)
    try:
        answer_review(webhook, client, pod, review)
    finally:
        asked = dns.query_count(BACKEND_HOST) - queries
        print(style(f"DNS queries for {BACKEND_HOST}: {asked}", "36"))


def answer_review(
    webhook: WebhookProcess, client: httpx.Client, pod: dict[str, Any], review: dict[str, Any]
) -> None:
    response = webhook.post(client, "/mutate", json.dumps(review).encode())
    response.raise_for_status()
    answer = response.json()["response"]
    if answer["uid"] != review["request"]["uid"]:
        raise RuntimeError("the webhook answered another review")
    name = pod["metadata"].get("name") or pod["metadata"]["generateName"] + "*"
    if not answer["allowed"]:
        status = answer["status"]
        print(style(f"DENIED ({status['code']}): ", "31;1") + status["message"])
        return
    for warning in answer.get("warnings", []):
        print(style("warning: ", "33;1") + warning)
    if "patch" not in answer:
        print(style("ALLOWED unchanged", "32;1"))
        return
    operations = json.loads(base64.b64decode(answer["patch"]))
    print(style(f"ALLOWED with a JSON Patch of {len(operations)} operations", "32;1"))
    admitted = jsonpatch.apply_patch(pod, operations)
    print_diff(pod, admitted, name)
    gates = [gate["name"] for gate in admitted["spec"].get("schedulingGates") or []]
    backend = (admitted["metadata"].get("annotations") or {}).get("gvirtus.io/backend")
    if "gvirtus.io/backend" in gates:
        print(style("gated: the placement controller writes the backend and removes the gate", "1"))
    elif backend:
        print(style(f"pinned at admission to backend pod {backend}", "1"))


def show_injector(example: Path) -> None:
    heading(f"gvirtus-kai inject -f examples/{example.name} --backend-address {BACKEND_ADDRESS}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    injector = Path(sys.executable).with_name("gvirtus-kai")
    done = subprocess.run(
        [str(injector), "inject", "-f", str(example), "--backend-address", BACKEND_ADDRESS],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    print(done.stdout, end="")
    if done.stderr:
        print(done.stderr, end="", file=sys.stderr)


def stop(webhook: WebhookProcess | None) -> None:
    if webhook is None:
        return
    try:
        webhook.stop(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(webhook.process.pid, signal.SIGKILL)


def start(
    workdir: Path, volume: SecretVolume, dns: LoopbackDnsServer, **settings: str
) -> WebhookProcess:
    with (workdir / "webhook.log").open("ab") as log:
        return start_webhook(
            {
                "TLS_CERT_FILE": str(volume.cert_file),
                "TLS_KEY_FILE": str(volume.key_file),
                "DNS_NAMESERVERS": dns.nameserver,
                "BACKEND_HOST": BACKEND_HOST,
                **settings,
            },
            stderr=log,
        )


def main() -> int:
    (ROOT / ".demo").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=ROOT / ".demo"))
    webhooks: list[WebhookProcess] = []
    dns = LoopbackDnsServer()
    try:
        ca = trustme.CA()
        volume = SecretVolume(workdir / "tls")
        volume.write(serving_cert(ca))
        dns.start()
        dns.set_a(BACKEND_HOST, *BACKEND_PODS, ttl=DNS_TTL_SECONDS)
        heading("setup")
        print(f"DNS server on {dns.nameserver}: {BACKEND_HOST} (headless)")
        print(f"  -> ready backend pods {', '.join(BACKEND_PODS)} (TTL {DNS_TTL_SECONDS}s)")
        webhook = start(workdir, volume, dns, PLACEMENT="controller")
        webhooks.append(webhook)
        waited = webhook.wait_ready(client_context(ca))
        print(f"gvirtus-webhook ready on https://127.0.0.1:{webhook.port} after {waited:.2f}s")
        print("placement: controller (the chart's default, with controller.enabled)")
        print(f"certificate from a throwaway CA, verified for {VERIFIED_NAME}")

        examples = sorted(EXAMPLES.glob("*.yaml"))
        first = pod_for(yaml.safe_load((EXAMPLES / "gpu-pod.yaml").read_text()))
        sed = pod_for(yaml.safe_load((EXAMPLES / "sed-strategy-pod.yaml").read_text()))
        with api_server_client(client_context(ca)) as client:
            for example in examples:
                for document in yaml.safe_load_all(example.read_text()):
                    pod = pod_for(document)
                    heading(f"examples/{example.name}: {document['kind']} {pod_name(document)}")
                    submit(webhook, client, pod, dns)

            heading("no backend pod is ready (the headless Service has no records)")
            dns.set_nxdomain(BACKEND_HOST)
            time.sleep(DNS_TTL_SECONDS + 0.2)  # let the cached addresses expire
            print("mount and sed pods are gated as before: no lookup, so nothing to fail")
            submit(webhook, client, sed, dns)

        heading("controller.enabled=false: placement dns pins every pod at admission")
        dns.set_a(BACKEND_HOST, *BACKEND_PODS, ttl=DNS_TTL_SECONDS)
        pinning = start(workdir, volume, dns, PLACEMENT="dns")
        webhooks.append(pinning)
        pinning.wait_ready(client_context(ca))
        with api_server_client(client_context(ca)) as client:
            submit(pinning, client, first, dns)
            submit(pinning, client, sed, dns)
            heading("placement dns, no backend pod ready: a pod cannot wait, so it is refused")
            dns.set_nxdomain(BACKEND_HOST)
            time.sleep(DNS_TTL_SECONDS + 0.2)
            submit(pinning, client, sed, dns)
        show_injector(EXAMPLES / "gpu-pod.yaml")
        return 0
    finally:
        for running in webhooks:
            stop(running)
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def pod_name(document: dict[str, Any]) -> str:
    metadata = document["metadata"]
    return f"{metadata.get('namespace', 'default')}/{metadata['name']}"


if __name__ == "__main__":
    sys.exit(main())
