"""The webhook serving from its own pod: the API server reaches it through its Service, and with
``failurePolicy: Fail`` a labelled pod is refused clearly while no webhook pod runs."""

from __future__ import annotations

import yaml
from lightkube.resources.core_v1 import Pod

from tests.node.chart import NAMESPACE
from tests.node.kube import Kube, wait_until
from tests.node.workloads import gvirtus_pod

GATE = "gvirtus.io/backend"


def test_the_api_server_reaches_the_webhook_pod_through_its_service(release: Kube) -> None:
    (webhook,) = release.component_pods("webhook")
    assert webhook.status is not None
    assert webhook.status.podIP
    endpoints = release.kubectl(
        "get", "endpointslices", "-n", NAMESPACE,
        "-l", "kubernetes.io/service-name=gvirtus-webhook",
        "-o", "jsonpath={.items[*].endpoints[*].addresses[*]}",
    ).stdout.split()  # fmt: skip
    assert endpoints == [webhook.status.podIP]
    # A server-side dry run goes through admission, so it shows the mutation without a pod.
    proc = release.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=_yaml(gvirtus_pod("dry-run"))
    )
    assert GATE in proc.stdout, "the webhook pod mutated the pod: it carries the gate"
    assert '"gvirtus.io/frontend.allowed": "true"' in proc.stdout


def test_with_failure_policy_fail_and_no_webhook_pod_labelled_pods_are_refused(
    release: Kube,
) -> None:
    release.kubectl("scale", "deployment", "-n", NAMESPACE, "gvirtus-kai-webhook", "--replicas=0")
    try:
        wait_until(lambda: not release.component_pods("webhook"), "the webhook pod to be gone")
        proc = release.kubectl(
            "create", "-f", "-", stdin=_yaml(gvirtus_pod("refused")), check=False
        )
        assert proc.returncode != 0
        assert "gvirtus" in proc.stderr, proc.stderr
        assert "webhook" in proc.stderr, proc.stderr
        assert not list(release.client.list(Pod, namespace="default", labels={"refused": "x"}))
        # Unlabelled pods never reach the webhook, so they are not refused.
        plain = gvirtus_pod("unlabelled")
        plain["metadata"]["labels"] = {}
        plain["spec"]["containers"][0]["resources"] = {}
        release.kubectl("create", "--dry-run=server", "-f", "-", stdin=_yaml(plain))
    finally:
        release.kubectl(
            "scale", "deployment", "-n", NAMESPACE, "gvirtus-kai-webhook", "--replicas=1"
        )
        release.wait_release_ready()


def _yaml(document: object) -> str:
    return yaml.safe_dump(document)
