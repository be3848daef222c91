"""The gvirtus-kai chart installed with the real ``helm`` into the test cluster, and our services
run as local processes with the settings the chart rendered.

How the API server reaches the local webhook process: kube-apiserver runs with
``--enable-aggregator-routing=true``, so it calls a webhook at one of its Service's endpoints
(a pod IP and the container port) instead of the ClusterIP. The chart is installed with
``webhook.containerPort`` set to a free port of this machine; the webhook pod the Deployment
creates is marked Running and Ready with this machine's non-loopback IPv4 address as its pod IP
(endpoint validation refuses loopback), so the endpointslice controller publishes
``<local IP>:<port>``; and ``gvirtus-webhook`` listens on that port with the TLS Secret the chart
created, read back from the API. The API server verifies the certificate for
``<service>.<namespace>.svc`` against the chart's caBundle, as in a real cluster.

The webhook's backend lookup goes to the loopback DNS server of ``Cluster.dns``, which answers
the backend Service's name as the cluster DNS would (``Cluster.publish_service``). The backend
DaemonSet's pods are marked Ready with addresses of a documentation range, so the backend Services
have endpoints. When the release has a placement controller, ``gvirtus-controller`` runs as a local
process too, with the chart's settings and its own ServiceAccount's token.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from lightkube import ApiError
from lightkube.models.admissionregistration_v1 import MutatingWebhook
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.admissionregistration_v1 import MutatingWebhookConfiguration
from lightkube.resources.apps_v1 import DaemonSet, Deployment
from lightkube.resources.core_v1 import Namespace, Pod, Secret, ServiceAccount

from tests.cluster.controlplane import ROOT
from tests.cluster.kube import WAIT, Cluster, wait_until
from tests.tlsfiles import SecretVolume
from tests.webhookproc import WebhookProcess, start_webhook

CHART = ROOT / "charts" / "gvirtus-kai"
RELEASE = "gvirtus-kai"
NAMESPACE = "gvirtus-system"
ENABLE_LABEL = "gvirtus.io/enabled"
PROPERTIES_ANNOTATION = "gvirtus.io/properties"
PROBE_NAMESPACE = "webhook-probe"
GVIRTUS_HOOK = "pods.gvirtus.io"


def free_port_on_all_addresses() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def set_json_args(values: Mapping[str, Any]) -> list[str]:
    """``{"webhook.replicaCount": 2}`` -> ``--set-json webhook.replicaCount=2``."""
    args: list[str] = []
    for path, value in values.items():
        args += ["--set-json", f"{path}={json.dumps(value)}"]
    return args


def labelled_pod(name: str, namespace: str, labels: Mapping[str, str] | None = None) -> Pod:
    return Pod(
        metadata=ObjectMeta(
            name=name, namespace=namespace, labels=dict(labels or {ENABLE_LABEL: "true"})
        ),
        spec=PodSpec(containers=[Container(name="app", image="registry.example.com/app:1")]),
    )


def local_process_env(
    settings: Mapping[str, str], kubeconfig: Path | None = None
) -> dict[str, str]:
    """The environment of a service run as a local process: the caller's, minus any
    ``GVIRTUS_KAI_*`` it had, plus ``GVIRTUS_KAI_<KEY>`` for each setting and the kubeconfig."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    env.update({f"GVIRTUS_KAI_{key}": value for key, value in settings.items()})
    env["KUBECONFIG"] = str(kubeconfig)
    return env


def ensure_namespace(cluster: Cluster, name: str, labels: Mapping[str, str] | None = None) -> None:
    """The namespace, once pods can be created in it (its ``default`` ServiceAccount exists)."""
    try:
        cluster.client.create(Namespace(metadata=ObjectMeta(name=name, labels=dict(labels or {}))))
    except ApiError as error:
        if error.status.code != 409:
            raise

    def has_default_account() -> bool:
        return any(True for _ in cluster.client.list(ServiceAccount, namespace=name))

    wait_until(has_default_account, f"the default ServiceAccount of namespace {name}")


@dataclass
class Release:
    cluster: Cluster
    namespace: str = NAMESPACE
    name: str = RELEASE
    webhook_port: int = field(default_factory=free_port_on_all_addresses)
    webhook: WebhookProcess | None = None
    controller: subprocess.Popen[bytes] | None = None
    work: Path | None = None
    backend_addresses: list[str] = field(default_factory=list)

    @property
    def base_values(self) -> dict[str, Any]:
        """What every install sets: the free webhook port and the loopback cluster DNS."""
        return {
            "webhook.containerPort": self.webhook_port,
            "webhook.dns.nameservers": [self.cluster.dns.nameserver],
        }

    def _helm(self, verb: str, values: Mapping[str, Any], *extra: str) -> str:
        args = [verb, self.name, str(CHART), "--namespace", self.namespace]
        args += set_json_args({**self.base_values, **values})
        return self.cluster.helm(*args, *extra).stdout

    def install(self, values: Mapping[str, Any] | None = None) -> str:
        return self._helm("install", values or {}, "--create-namespace")

    def upgrade(self, values: Mapping[str, Any] | None = None) -> str:
        return self._helm("upgrade", values or {})

    def stop_processes(self) -> None:
        """Stop the local webhook and controller processes, if running."""
        self.stop_controller()
        self.stop_webhook()

    def uninstall(self) -> None:
        self.stop_processes()
        self.cluster.helm("uninstall", self.name, "--namespace", self.namespace, "--wait")

    def manifests(self) -> list[dict[str, Any]]:
        """The objects of the deployed release, as Helm recorded them."""
        text = self.cluster.helm("get", "manifest", self.name, "--namespace", self.namespace).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def component_name(self, component: str) -> str:
        return f"{self.name}-{component}"

    # -- the webhook process ----------------------------------------------------------------------

    def webhook_settings(self) -> dict[str, str]:
        """The ``GVIRTUS_KAI_*`` settings of the chart's webhook Deployment (prefix dropped)."""
        return self.settings_of(Deployment, "webhook")

    def settings_of(
        self,
        kind: type[Deployment | DaemonSet],
        component: str,
        node_name: str = "",
        pod_name: str = "",
    ) -> dict[str, str]:
        """The ``GVIRTUS_KAI_*`` settings of a component's container as installed, prefix
        dropped; downward-API references get ``node_name``/``pod_name``, as the kubelet fills
        them in."""
        workload = self.cluster.client.get(
            kind, self.component_name(component), namespace=self.namespace
        )
        assert workload.spec is not None
        assert workload.spec.template.spec is not None
        [container] = workload.spec.template.spec.containers
        settings = {}
        for env in container.env or []:
            if not env.name.startswith("GVIRTUS_KAI_"):
                continue
            field_ref = env.valueFrom.fieldRef if env.valueFrom is not None else None
            if field_ref is not None:
                downward = {"spec.nodeName": node_name, "metadata.name": pod_name}
                value = downward[field_ref.fieldPath]
            else:
                value = env.value or ""
            settings[env.name.removeprefix("GVIRTUS_KAI_")] = value
        return settings

    def tls_secret(self) -> dict[str, bytes]:
        secret = self.cluster.client.get(
            Secret, self.component_name("webhook-tls"), namespace=self.namespace
        )
        return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}

    def webhook_configuration(self) -> MutatingWebhookConfiguration:
        name = f"{self.component_name('webhook')}.{self.namespace}"
        return self.cluster.client.get(MutatingWebhookConfiguration, name)

    def gvirtus_webhook(self) -> MutatingWebhook:
        """The configuration's entry for GVirtuS pods (the other one guards plain GPU pods)."""
        [webhook] = [
            w for w in self.webhook_configuration().webhooks or [] if w.name == GVIRTUS_HOOK
        ]
        return webhook

    def service_name(self) -> str:
        """The Service the API server calls: ``clientConfig.service`` of the chart's webhook."""
        webhook = self.gvirtus_webhook()
        assert webhook.clientConfig.service is not None
        return webhook.clientConfig.service.name

    def start_webhook(self, work: Path) -> WebhookProcess:
        """Run ``gvirtus-webhook`` as the webhook pod: its pod marked Ready at this machine's
        address, the chart's settings and TLS Secret; return once the API server calls it."""
        self.work = work
        pods = wait_until(
            lambda: self.cluster.pods(self.namespace, self.selector("webhook")),
            "the webhook Deployment's pod",
        )
        for pod in pods:
            assert pod.metadata is not None
            assert pod.metadata.name is not None
            self.cluster.mark_pod_running(self.namespace, pod.metadata.name, self.cluster.node_ip)
        self.backend_addresses = self.mark_backends_ready()
        webhook = self.restart_webhook()
        self.start_controller()
        return webhook

    def mark_backends_ready(self) -> list[str]:
        """Mark the backend DaemonSet's pods Running and Ready, each with its own address from
        a documentation range (never dialled: only written into GVirtuS configurations); the
        addresses."""
        try:
            self.cluster.client.get(
                DaemonSet, self.component_name("backend"), namespace=self.namespace
            )
        except ApiError as error:
            if error.status.code == 404:  # backend.enabled=false
                return []
            raise
        pods = wait_until(
            lambda: self.cluster.pods(self.namespace, self.selector("backend")),
            "the backend DaemonSet's pods",
        )
        addresses = []
        for number, pod in enumerate(pods, start=10):
            assert pod.metadata is not None
            assert pod.metadata.name is not None
            address = f"203.0.113.{number}"
            self.cluster.mark_pod_running(self.namespace, pod.metadata.name, address)
            addresses.append(address)
        return addresses

    def restart_webhook(self) -> WebhookProcess:
        """(Re)start the local process with the current Secret and settings."""
        assert self.work is not None
        self.stop_webhook()
        tls = SecretVolume(self.work_file("webhook-tls"))
        secret = self.tls_secret()
        tls.write_files({"tls.crt": secret["tls.crt"], "tls.key": secret["tls.key"]})
        settings = self.webhook_settings()
        settings.update(TLS_CERT_FILE=str(tls.cert_file), TLS_KEY_FILE=str(tls.key_file))
        with self.work_file("webhook.log").open("ab") as log:
            self.webhook = start_webhook(settings, stderr=log)
        wait_until(self._webhook_ready, "the local webhook process to answer /readyz")
        service, namespace = settings["BACKEND_HOST"].split(".")[:2]
        # A headless Service's records are its ready endpoints: wait for the backends' to appear.
        wait_until(
            lambda: self.cluster.publish_service(namespace, service) or not self.backend_addresses,
            f"DNS records for the backend Service {namespace}/{service}",
        )
        self.wait_until_called()
        return self.webhook

    def start_controller(self) -> subprocess.Popen[bytes] | None:
        """Run ``gvirtus-controller`` with the chart's settings and its own ServiceAccount's token
        when the release has a controller; None when it has none."""
        name = self.component_name("controller")
        try:
            self.cluster.client.get(Deployment, name, namespace=self.namespace)
        except ApiError as error:
            if error.status.code == 404:  # controller.enabled=false
                return None
            raise
        settings = self.settings_of(Deployment, "controller", pod_name=f"{name}-local")
        health_port = free_port_on_all_addresses()
        # The chart's health port is a container port; locally, a free loopback port serves.
        settings.update(HEALTH_HOST="127.0.0.1", HEALTH_PORT=str(health_port))
        env = local_process_env(settings, self.cluster.token_for(self.namespace, name))
        with self.work_file("controller.log").open("ab") as log:
            self.controller = subprocess.Popen(
                [str(Path(sys.executable).with_name("gvirtus-controller"))],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.controller is not None
            if self.controller.poll() is not None:
                log_text = self.work_file("controller.log").read_text(errors="replace")
                raise AssertionError(f"gvirtus-controller exited: {log_text[-2000:]}")
            try:
                answer = httpx.get(f"http://127.0.0.1:{health_port}/readyz", timeout=2.0)
            except httpx.TransportError:
                return False
            return answer.status_code == 200

        wait_until(ready, "the local controller process to be ready")
        return self.controller

    def stop_controller(self) -> None:
        if self.controller is not None:
            self.controller.terminate()
            try:
                self.controller.wait(30)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait()
            self.controller = None

    def work_file(self, name: str) -> Path:
        assert self.work is not None
        return self.work / f"{self.namespace}-{name}"

    def stop_webhook(self) -> None:
        if self.webhook is not None:
            self.webhook.stop()
            self.webhook = None

    def backend_pods(self) -> dict[str, str]:
        """The backend DaemonSet's pods once bound: node name -> pod name."""
        pods = {}
        for pod in self.cluster.pods(self.namespace, self.selector("backend")):
            assert pod.metadata is not None
            if pod.spec is not None and pod.spec.nodeName and not pod.metadata.deletionTimestamp:
                pods[pod.spec.nodeName] = str(pod.metadata.name)
        return pods

    def selector(self, component: str) -> dict[str, str]:
        """The labels selecting a component's pods of this release."""
        return {"app.kubernetes.io/instance": self.name, "app.kubernetes.io/component": component}

    def _client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.tls_secret()["ca.crt"].decode())

    def _get(self, path: str) -> httpx.Response:
        assert self.webhook is not None
        host = f"{self.service_name()}.{self.namespace}.svc"
        with httpx.Client(verify=self._client_context(), timeout=5.0) as http:
            return http.get(self.webhook.url(path), extensions={"sni_hostname": host})

    def _webhook_ready(self) -> bool:
        assert self.webhook is not None
        if self.webhook.process.poll() is not None:
            raise AssertionError(
                f"the webhook process exited with {self.webhook.process.returncode}: "
                + self.webhook_log_tail()
            )
        try:
            return self._get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def webhook_log_tail(self, lines: int = 20) -> str:
        text = self.work_file("webhook.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def admissions(self) -> float:
        """Admission reviews the webhook has answered, from its Prometheus metrics."""
        text = self._get("/metrics").text
        return sum(
            float(match.group(1))
            for match in re.finditer(
                r"^gvirtus_webhook_admissions_total\{[^}]*\} (\S+)$", text, re.M
            )
        )

    def wait_until_called(self, timeout: float = WAIT) -> None:
        """Until the API server routes a labelled pod's review to the webhook (the endpoint has
        reached its informers): dry-run creates in a probe namespace until one comes back
        mutated."""
        ensure_namespace(self.cluster, PROBE_NAMESPACE)
        last: list[str] = []

        def mutated() -> bool:
            try:
                pod = self.cluster.client.create(
                    labelled_pod("probe", PROBE_NAMESPACE), dry_run=True
                )
            except ApiError as error:
                last[:] = [error.status.message or str(error)]
                return False
            assert pod.metadata is not None
            return PROPERTIES_ANNOTATION in (pod.metadata.annotations or {}) or bool(
                pod.spec and pod.spec.schedulingGates
            )

        try:
            wait_until(mutated, "the API server to call the webhook", timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}; last answer: {last}") from None
