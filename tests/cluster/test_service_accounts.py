"""What each component's ServiceAccount may do, as the chart's RBAC grants it on the real API
server; and the labeler process doing its job with nothing but its own account's token."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client
from lightkube.models.authorization_v1 import (
    ResourceAttributes,
    SelfSubjectAccessReviewSpec,
    SelfSubjectRulesReviewSpec,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.authorization_v1 import SelfSubjectAccessReview, SelfSubjectRulesReview
from lightkube.resources.core_v1 import Node, Secret, ServiceAccount
from lightkube.types import PatchType

from tests.cluster.kube import BACKEND, FRONTEND, Cluster, errors_of, wait_until
from tests.cluster.release import Release, ensure_namespace, local_process_env

LABELER = str(Path(sys.executable).with_name("gvirtus-labeler"))


def client_of(cluster: Cluster, release: Release, component: str) -> Client:
    account = release.component_name(component)
    return cluster.client_for(cluster.token_for(release.namespace, account))


@pytest.fixture(scope="module")
def baseline(cluster: Cluster) -> Client:
    """A ServiceAccount bound to nothing: what every authenticated identity may do anyway (ask
    about itself, discovery and the like, as the bootstrap roles grant)."""
    ensure_namespace(cluster, "rbac-baseline")
    cluster.client.create(
        ServiceAccount(metadata=ObjectMeta(name="nobody")), namespace="rbac-baseline"
    )
    return cluster.client_for(cluster.token_for("rbac-baseline", "nobody"))


def allowed(
    client: Client,
    verb: str,
    resource: str,
    namespace: str = "",
    *,
    group: str = "",
    subresource: str = "",
) -> bool:
    attributes = ResourceAttributes(
        verb=verb,
        resource=resource,
        namespace=namespace or None,
        group=group or None,
        subresource=subresource or None,
    )
    review = client.create(
        SelfSubjectAccessReview(spec=SelfSubjectAccessReviewSpec(resourceAttributes=attributes))
    )
    assert review.status is not None
    return review.status.allowed


def resource_rules(client: Client, namespace: str) -> list[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples the identity holds in ``namespace``."""
    review = client.create(
        SelfSubjectRulesReview(spec=SelfSubjectRulesReviewSpec(namespace=namespace))
    )
    assert review.status is not None
    return sorted(
        (group, resource, verb)
        for rule in review.status.resourceRules
        for group in rule.apiGroups or [""]
        for resource in rule.resources or []
        for verb in rule.verbs
    )


# -- the labeler ----------------------------------------------------------------------------------


def test_the_labeler_account_may_read_and_patch_nodes(cluster: Cluster, release: Release) -> None:
    labeler = client_of(cluster, release, "labeler")

    assert all(allowed(labeler, verb, "nodes") for verb in ("get", "list", "watch", "patch"))


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "subresource"),
    [
        ("create", "nodes", "", ""),
        ("delete", "nodes", "", ""),
        ("update", "nodes", "", ""),
        ("patch", "nodes", "", "status"),
        ("get", "secrets", "gvirtus-system", ""),
        ("list", "pods", "", ""),
        ("create", "pods", "default", ""),
        ("patch", "daemonsets", "gvirtus-system", ""),
    ],
)
def test_the_labeler_account_is_denied_everything_else(
    cluster: Cluster, release: Release, verb: str, resource: str, namespace: str, subresource: str
) -> None:
    labeler = client_of(cluster, release, "labeler")
    group = "apps" if resource == "daemonsets" else ""

    assert not allowed(labeler, verb, resource, namespace, group=group, subresource=subresource)


def test_a_write_outside_the_labelers_role_is_refused_with_403(
    cluster: Cluster, release: Release
) -> None:
    labeler = client_of(cluster, release, "labeler")

    deleting = errors_of(lambda: labeler.delete(Node, "plain"))
    reading_secrets = errors_of(
        lambda: labeler.get(
            Secret, release.component_name("webhook-tls"), namespace="gvirtus-system"
        )
    )

    assert (deleting.status.code, reading_secrets.status.code) == (403, 403)
    assert cluster.client.get(Node, "plain")


@pytest.mark.parametrize("component", ["webhook", "device-plugin", "backend"])
def test_the_other_components_accounts_can_do_nothing(
    cluster: Cluster, release: Release, baseline: Client, component: str
) -> None:
    account = client_of(cluster, release, component)

    for namespace in (release.namespace, "default"):
        assert resource_rules(account, namespace) == resource_rules(baseline, namespace)
    assert not allowed(account, "get", "nodes")
    assert not allowed(account, "list", "pods", release.namespace)
    assert errors_of(lambda: account.delete(Node, "plain")).status.code == 403


def test_the_rules_review_sees_what_the_labeler_account_holds_beyond_the_baseline(
    cluster: Cluster, release: Release, baseline: Client
) -> None:
    """The control for the test above: the comparison tells granted rules apart."""
    rules = set(resource_rules(client_of(cluster, release, "labeler"), "default"))

    extra = rules - set(resource_rules(baseline, "default"))

    assert extra == {("", "nodes", verb) for verb in ("get", "list", "patch", "watch")}


# -- the controller --------------------------------------------------------------------------------


def test_the_controller_account_holds_exactly_the_placement_contract(
    cluster: Cluster, release: Release, baseline: Client
) -> None:
    controller = client_of(cluster, release, "controller")
    anywhere = {("", "pods", verb) for verb in ("get", "list", "watch", "patch")}
    anywhere |= {("", "events", "create"), ("", "events", "patch")}
    in_release_namespace = {
        ("discovery.k8s.io", "endpointslices", verb) for verb in ("get", "list", "watch")
    }

    def extra(namespace: str) -> set[tuple[str, str, str]]:
        granted = set(resource_rules(controller, namespace))
        return granted - set(resource_rules(baseline, namespace))

    # Defaults: one replica (no Lease), onBackendLoss keep (no evictions).
    assert extra("default") == anywhere
    assert extra(release.namespace) == anywhere | in_release_namespace


# -- the labeler process with its own token --------------------------------------------------------


@pytest.fixture
def operator_node(cluster: Cluster) -> Iterator[str]:
    """A node on which the operator opted in as a backend, without the frontend label."""
    name = "labeler-target"
    cluster.client.create(Node(metadata=ObjectMeta(name=name, labels={BACKEND: "true"})))
    yield name
    cluster.client.delete(Node, name)


def node_labels(cluster: Cluster, name: str) -> dict[str, str]:
    node = cluster.client.get(Node, name)
    assert node.metadata is not None
    return dict(node.metadata.labels or {})


def test_the_labeler_process_labels_a_node_keeps_the_operators_value_and_restores_a_removal(
    cluster: Cluster, release: Release, operator_node: str, tmp_path: Path
) -> None:
    settings = release.settings_of(DaemonSet, "labeler", node_name=operator_node)
    # The chart's health port is a container port; locally any free loopback port serves.
    settings.update(HEALTH_HOST="127.0.0.1", HEALTH_PORT="0")
    kubeconfig = cluster.token_for(release.namespace, release.component_name("labeler"))
    env = local_process_env(settings, kubeconfig)
    log = tmp_path / "labeler.log"
    with log.open("wb") as output:
        process = subprocess.Popen([LABELER], env=env, stderr=output, start_new_session=True)
    try:
        wait_until(
            lambda: node_labels(cluster, operator_node).get(FRONTEND) == "true",
            "the labeler to add the frontend label",
        )
        assert node_labels(cluster, operator_node)[BACKEND] == "true"

        cluster.client.patch(
            Node,
            operator_node,
            {"metadata": {"labels": {FRONTEND: None}}},
            patch_type=PatchType.MERGE,
        )

        wait_until(
            lambda: node_labels(cluster, operator_node).get(FRONTEND) == "true",
            "the labeler to restore the removed label",
        )
        assert node_labels(cluster, operator_node)[BACKEND] == "true"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0, log.read_text()
    levels = {json.loads(line)["level"] for line in log.read_text().splitlines() if line[:1] == "{"}
    assert "error" not in levels
