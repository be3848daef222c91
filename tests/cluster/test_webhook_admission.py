"""The chart's MutatingWebhookConfiguration and the real webhook process, seen from the real API
server: which pods it is called for, what it does to them, and what happens when it is down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError
from lightkube.models.batch_v1 import JobSpec
from lightkube.models.core_v1 import PodTemplateSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod

from tests.cluster.controlplane import ROOT
from tests.cluster.kube import FRONTEND, FRONTEND_NODES, GPU, Cluster, wait_until
from tests.cluster.release import (
    ENABLE_LABEL,
    PROPERTIES_ANNOTATION,
    Release,
    ensure_namespace,
    labelled_pod,
)

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def example_objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def assert_pinned_and_placed(cluster: Cluster, pod: Pod, backends: list[str]) -> None:
    """Where every GVirtuS pod ends up: bound to a frontend node, pinned to one of the ready
    ``backends`` (with the placement controller, written when it released the pod's scheduling
    gate), its containers reading that address when they start - as a projected annotation
    (mount) or through the variable the sed wrapper turns into the config."""
    assert pod.metadata is not None
    assert pod.metadata.name is not None
    name = pod.metadata.name
    node = cluster.scheduled_node(str(pod.metadata.namespace), name)  # released, then bound
    assert node in FRONTEND_NODES, name
    pod = cluster.client.get(Pod, name, namespace=pod.metadata.namespace)
    assert pod.metadata is not None
    assert pod.spec is not None
    assert (pod.spec.nodeSelector or {}).get(FRONTEND) == "true", name
    assert not pod.spec.schedulingGates, name
    annotations = pod.metadata.annotations or {}
    address = annotations.get("gvirtus.io/backend", "").rpartition(":")[0]
    assert address in backends, name
    env = {e.name for c in pod.spec.containers for e in c.env or []}
    assert "GVIRTUS_CONFIG" in env, name
    wrapped = [c for c in pod.spec.containers if (c.command or [])[:2] == ["/bin/sh", "-c"]]
    for container in wrapped:  # sed
        [variable] = [e for e in container.env or [] if e.name == "GVIRTUS_KAI_BACKEND"]
        assert variable.valueFrom is not None, name
        assert variable.valueFrom.fieldRef is not None, name
        path = variable.valueFrom.fieldRef.fieldPath
        assert path == "metadata.annotations['gvirtus.io/backend']", name
    if not wrapped:  # mount
        config = json.loads(annotations[PROPERTIES_ANNOTATION])
        assert {e["endpoint"]["server_address"] for e in config["communicator"]} == {address}, name


def created_pods(cluster: Cluster, namespace: str, labels: dict[str, str], count: int) -> list[Pod]:
    def listed() -> list[Pod] | None:
        pods = cluster.pods(namespace, labels)
        return pods if len(pods) >= count else None

    return wait_until(listed, f"{count} pods with labels {labels} in {namespace}")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted_mutated_pinned_to_a_backend_and_placed_on_a_frontend(
    cluster: Cluster, release: Release, example: Path
) -> None:
    objects = example_objects(example)
    for obj in objects:
        ensure_namespace(cluster, obj["metadata"]["namespace"])

    # The API server runs its own pod validation on the patched pod: success is the check.
    cluster.kubectl("apply", "--server-side", "-f", str(example))

    for obj in objects:
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        if obj["kind"] == "Pod":
            pods = [cluster.client.get(Pod, name, namespace=namespace)]
        else:
            selector = obj["spec"]["selector"]["matchLabels"]
            pods = created_pods(cluster, namespace, selector, obj["spec"].get("replicas", 1))
        for pod in pods:
            assert_pinned_and_placed(cluster, pod, release.backend_addresses)
        cluster.kubectl("delete", obj["kind"], name, "-n", namespace, "--wait=false")


def test_a_jobs_pods_are_mutated_pinned_and_placed(cluster: Cluster, release: Release) -> None:
    ensure_namespace(cluster, "batch")
    template = labelled_pod("unused", "batch", {ENABLE_LABEL: "true", "job": "train"})
    assert template.spec is not None
    template.spec.restartPolicy = "Never"
    template.spec.containers[0].resources = {"limits": {GPU: "1"}}  # type: ignore[assignment]
    job = Job(
        metadata=ObjectMeta(name="train", namespace="batch"),
        spec=JobSpec(
            template=PodTemplateSpec(
                metadata=ObjectMeta(labels={ENABLE_LABEL: "true", "job": "train"}),
                spec=template.spec,
            )
        ),
    )

    cluster.client.create(job)

    [pod] = created_pods(cluster, "batch", {"job": "train"}, 1)
    assert_pinned_and_placed(cluster, pod, release.backend_addresses)


def test_the_webhook_is_called_only_for_labelled_pods_in_included_namespaces(
    cluster: Cluster, release: Release
) -> None:
    ensure_namespace(cluster, "apps")
    ensure_namespace(cluster, "opted-out", {"gvirtus.io/injection": "disabled"})
    before = release.admissions()

    not_sent = [
        labelled_pod("unlabelled", "apps", {"app": "web"}),
        labelled_pod("label-false", "apps", {ENABLE_LABEL: "false"}),
        labelled_pod("in-kube-system", "kube-system"),
        labelled_pod("in-kube-node-lease", "kube-node-lease"),
        labelled_pod("in-release-namespace", release.namespace),
        labelled_pod("in-opted-out", "opted-out"),
    ]
    for pod in not_sent:
        cluster.client.create(pod)
    # A pod that is sent: the count moves by exactly one, so the count is live.
    cluster.client.create(labelled_pod("sent", "apps"))

    wait_until(lambda: release.admissions() > before, "the webhook to count the labelled pod")
    assert release.admissions() == before + 1
    for pod in not_sent:
        assert pod.metadata is not None
        assert pod.metadata.name is not None
        stored = cluster.client.get(Pod, pod.metadata.name, namespace=pod.metadata.namespace)
        assert stored.metadata is not None
        assert PROPERTIES_ANNOTATION not in (stored.metadata.annotations or {})


def test_mutated_pods_are_bound_only_to_frontend_nodes(cluster: Cluster, release: Release) -> None:
    ensure_namespace(cluster, "scheduling")
    names = [f"gpu-app-{i}" for i in range(6)]
    for name in names:
        pod = labelled_pod(name, "scheduling")
        assert pod.spec is not None
        pod.spec.containers[0].resources = {"limits": {GPU: "1"}}  # type: ignore[assignment]
        cluster.client.create(pod)

    nodes = {cluster.scheduled_node("scheduling", name) for name in names}

    assert nodes <= FRONTEND_NODES


def test_with_the_webhook_down_labelled_pods_are_refused_and_system_namespaces_still_work(
    cluster: Cluster, release: Release
) -> None:
    ensure_namespace(cluster, "outage")
    release.stop_webhook()
    try:
        with pytest.raises(ApiError) as refused:
            cluster.client.create(labelled_pod("refused", "outage"))
        cluster.client.create(labelled_pod("system", "kube-system", {"app": "dns"}))
        cluster.client.create(labelled_pod("system-labelled", "kube-system"))
        cluster.client.create(labelled_pod("unlabelled", "outage", {"app": "web"}))
    finally:
        release.restart_webhook()

    message = refused.value.status.message or ""
    assert 'failed calling webhook "pods.gvirtus.io"' in message
    assert "connection refused" in message
    assert release.webhook_configuration().webhooks[0].failurePolicy == "Fail"  # type: ignore[index]
    assert cluster.client.get(Pod, "system-labelled", namespace="kube-system")
