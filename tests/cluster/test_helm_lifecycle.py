"""helm install, upgrade and uninstall of the chart against the real API server, and every
chart-testing scenario accepted by the API server's own validation (server-side dry run)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import ROOT
from tests.cluster.kube import Cluster, wait_until
from tests.cluster.release import CHART, NAMESPACE, Release, ensure_namespace

SCENARIOS = sorted((CHART / "ci").glob("*-values.yaml"))
STAND_IN_CRDS = ROOT / "tests" / "cluster" / "cert-manager-crds.yaml"
# Objects the chart's objects create in turn: they must go with the release too.
DERIVED_KINDS = ("replicaset.apps", "pod", "controllerrevision.apps", "endpointslice")


@pytest.fixture
def fresh(cluster: Cluster) -> Iterator[Release]:
    """A release not installed yet; uninstalled after the test if the test left it installed."""
    release = Release(cluster)
    yield release
    listed = cluster.helm("list", "--namespace", release.namespace, "--short").stdout.split()
    if release.name in listed:
        release.uninstall()


@pytest.fixture(scope="module")
def cert_manager_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(STAND_IN_CRDS))
    for crd in ("issuers.cert-manager.io", "certificates.cert-manager.io"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")


def resource_kinds(cluster: Cluster) -> set[str]:
    """Every kind any scenario of the chart renders, as ``kubectl get`` names it, plus the
    objects they create in turn."""
    kinds: set[str] = set(DERIVED_KINDS)
    for scenario in SCENARIOS:
        text = cluster.helm(
            "template", "gvirtus-kai", str(CHART), "-n", NAMESPACE, "-f", str(scenario)
        ).stdout
        for doc in yaml.safe_load_all(text):
            if doc:
                group = doc["apiVersion"].rpartition("/")[0]
                kinds.add(f"{doc['kind'].lower()}.{group}" if group else doc["kind"].lower())
    return kinds


def objects_of_release(cluster: Cluster, release: Release, kinds: set[str]) -> list[str]:
    """``kind/namespace/name`` of every object labelled with the release, in any namespace."""
    found = []
    for kind in sorted(kinds):
        listing = cluster.get_json(
            kind, "--all-namespaces", "-l", f"app.kubernetes.io/instance={release.name}"
        )
        for item in listing["items"]:
            meta = item["metadata"]
            found.append(f"{kind}/{meta.get('namespace', '')}/{meta['name']}")
    return found


def secret_and_ca_bundle(cluster: Cluster, release: Release) -> tuple[dict[str, str], str]:
    secret = cluster.get_json(
        "secret", release.component_name("webhook-tls"), "-n", release.namespace
    )
    webhook = release.gvirtus_webhook()
    return secret["data"], str(webhook.clientConfig.caBundle)


def test_helm_install_into_gvirtus_system_creates_every_object_of_the_chart(
    cluster: Cluster, fresh: Release
) -> None:
    fresh.install()

    status = json.loads(
        cluster.helm("status", fresh.name, "-n", fresh.namespace, "-o", "json").stdout
    )
    assert status["info"]["status"] == "deployed"
    manifests = fresh.manifests()
    assert {m["kind"] for m in manifests} >= {
        "Deployment",
        "DaemonSet",
        "MutatingWebhookConfiguration",
        "ClusterRole",
        "Secret",
    }
    for manifest in manifests:
        meta = manifest["metadata"]
        scope = ["-n", meta["namespace"]] if "namespace" in meta else []
        cluster.kubectl("get", manifest["kind"], meta["name"], *scope)  # fails when missing


def test_helm_upgrade_keeps_the_webhook_certificate_and_applies_the_new_values(
    cluster: Cluster, fresh: Release
) -> None:
    fresh.install()
    secret_before, ca_bundle_before = secret_and_ca_bundle(cluster, fresh)

    fresh.upgrade(
        {
            "webhook.replicaCount": 2,
            "webhook.failurePolicy": "Ignore",
            "webhook.timeoutSeconds": 5,
            "webhook.logLevel": "debug",
            "devicePlugin.deviceCount": 8,
            "labeler.enabled": False,
        }
    )

    secret_after, ca_bundle_after = secret_and_ca_bundle(cluster, fresh)
    assert secret_after == secret_before
    assert ca_bundle_after == ca_bundle_before
    webhook = fresh.gvirtus_webhook()
    assert (webhook.failurePolicy, webhook.timeoutSeconds) == ("Ignore", 5)
    deployment = cluster.get_json("deployment", fresh.component_name("webhook"), "-n", NAMESPACE)
    assert deployment["spec"]["replicas"] == 2
    assert fresh.webhook_settings()["LOG_LEVEL"] == "debug"
    cluster.kubectl("get", "pdb", fresh.component_name("webhook"), "-n", NAMESPACE)
    plugin = cluster.get_json("daemonset", fresh.component_name("device-plugin"), "-n", NAMESPACE)
    [container] = plugin["spec"]["template"]["spec"]["containers"]
    assert {"name": "GVIRTUS_KAI_DEVICE_COUNT", "value": "8"} in container["env"]
    gone = cluster.kubectl(
        "get", "daemonset", fresh.component_name("labeler"), "-n", NAMESPACE, check=False
    )
    assert "NotFound" in gone.stderr


def test_helm_uninstall_leaves_no_object_of_the_release(
    cluster: Cluster, fresh: Release, cert_manager_crds: None
) -> None:
    # Every optional object on: the PDB (2 replicas) and the labeler's Deployment mode.
    fresh.install({"webhook.replicaCount": 2, "labeler.mode": "deployment"})
    kinds = resource_kinds(cluster)
    manifests = fresh.manifests()
    assert objects_of_release(cluster, fresh, kinds)  # the listing sees the release while it exists

    fresh.uninstall()

    wait_until(
        lambda: not objects_of_release(cluster, fresh, kinds),
        "the release's objects (and the pods and ReplicaSets they created) to be deleted",
    )
    for manifest in manifests:
        meta = manifest["metadata"]
        scope = ["-n", meta["namespace"]] if "namespace" in meta else []
        missing = cluster.kubectl("get", manifest["kind"], meta["name"], *scope, check=False)
        assert "NotFound" in missing.stderr, f"{manifest['kind']}/{meta['name']} is still there"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_every_chart_testing_scenario_passes_a_server_side_dry_run(
    cluster: Cluster, cert_manager_crds: None, scenario: Any
) -> None:
    namespace = "gvirtus-dry-run"
    ensure_namespace(cluster, namespace)
    text = cluster.helm(
        "template", "gvirtus-kai", str(CHART), "--namespace", namespace, "-f", str(scenario)
    ).stdout

    applied = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=text)

    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    assert applied.stdout.count("(server dry run)") == len(objects)


def test_a_server_side_dry_run_refuses_an_object_the_api_server_would_refuse(
    cluster: Cluster,
) -> None:
    """The control for the test above: the dry run applies the API server's own validation."""
    namespace = "gvirtus-dry-run"
    ensure_namespace(cluster, namespace)
    text = cluster.helm("template", "gvirtus-kai", str(CHART), "--namespace", namespace).stdout
    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    [deployment] = [
        o for o in objects if o["kind"] == "Deployment" and "webhook" in o["metadata"]["name"]
    ]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    volumes.append(dict(volumes[0]))  # two volumes of one name: valid YAML, invalid pod spec

    refused = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(deployment), check=False
    )

    assert refused.returncode != 0
    assert "Duplicate value" in refused.stderr
