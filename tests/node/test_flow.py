"""The whole flow, for real: each pod of ``examples/`` (its application containers replaced by the
stand-in GVirtuS frontend) is admitted by the webhook pod, gated, pinned by the controller pod,
scheduled to the frontend node and runs; inside the container the config names the pinned backend,
and that backend — and no other — saw every thread's connection, from the pod's own address."""

from __future__ import annotations

import json
from typing import Any

import pytest
from lightkube.resources.core_v1 import Event

from tests.node.cluster import FRONTEND_NODE
from tests.node.kube import Kube, wait_until
from tests.node.workloads import RunningPod, all_connected, example_pods, load_standin_examples

FRONTEND = "gvirtus.io/frontend.allowed"
THREADS = 4  # a multi-threaded CUDA program: every thread opens its own connection
BACKEND_PORT = "9999"
EXAMPLES = (
    "gpu-pod.yaml",
    "multi-container-deployment.yaml",
    "no-gpu-limit-pod.yaml",
    "sed-strategy-pod.yaml",
)


def config_in_container(kube: Kube, pod: RunningPod, container: str) -> dict[str, Any]:
    """The properties.json the container's program reads, found as GVirtuS finds it."""
    text = kube.exec(
        pod.namespace, pod.name, container,
        "sh", "-c", 'cat "${GVIRTUS_CONFIG:-$GVIRTUS_HOME/etc/properties.json}"',
    )  # fmt: skip
    config: dict[str, Any] = json.loads(text)
    return config


def open_connections_from(kube: Kube, backend_ip: str, client_ip: str) -> list[dict[str, Any]]:
    return [
        c
        for c in kube.backend_connections(backend_ip)
        if c["peer"][0] == client_ip and c.get("open", True)
    ]


def run_example(kube: Kube, name: str) -> list[RunningPod]:
    documents = load_standin_examples(name, THREADS)
    for document in documents:
        kube.ensure_namespace(document["metadata"]["namespace"])
    kube.apply(documents)
    pods = [pod for document in documents for pod in example_pods(kube, document)]
    assert pods
    return pods


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_pod_is_pinned_runs_on_the_frontend_and_reaches_only_its_backend(
    release: Kube, example: str
) -> None:
    backends = {p.status.podIP or "" for p in release.backend_pods() if p.status}
    assert len(backends) == 2, "both GPU nodes serve a ready backend"
    for pod in run_example(release, example):
        node_labels = release.node_object(pod.node).metadata.labels or {}  # type: ignore[union-attr]
        assert node_labels.get(FRONTEND) == "true", f"{pod.name} ran on {pod.node}"
        if example != "no-gpu-limit-pod.yaml":  # GPU pods need a virtual slot: the frontend node's
            assert pod.node == FRONTEND_NODE
        ip, _, port = pod.backend.partition(":")
        assert ip in backends, pod.backend
        assert port == BACKEND_PORT, pod.backend
        for container in pod.targets:
            config = config_in_container(release, pod, container)
            entries = config["communicator"]
            assert len(entries) >= THREADS, "every thread needs its own entry"
            for entry in entries:
                assert entry["endpoint"]["server_address"] == ip
                assert entry["endpoint"]["port"] == BACKEND_PORT
            report = json.loads(release.logs(pod.namespace, pod.name, container).splitlines()[-1])
            assert report["connected"] == THREADS

        connections = THREADS * len(pod.targets)
        wait_until(all_connected(release, pod, ip, connections), f"{pod.name}'s connections")
        for other in backends - {ip}:
            assert not open_connections_from(release, other, pod.ip), f"{pod.name} reached {other}"
        events = release.client.list(
            Event, namespace=pod.namespace, fields={"involvedObject.name": pod.name}
        )
        assert "BackendAssigned" in {e.reason for e in events}


def test_sed_container_rewrote_its_own_config_at_start(release: Kube) -> None:
    (pod,) = run_example(release, "sed-strategy-pod.yaml")
    container = pod.targets[0]
    spec = release.pod(pod.namespace, pod.name).spec
    assert spec is not None
    (wrapped,) = [c for c in spec.containers if c.name == container]
    assert wrapped.command, "the command is wrapped"
    assert wrapped.command[0] == "/bin/sh", "the command is wrapped"
    assert not any(m.mountPath.endswith("properties.json") for m in wrapped.volumeMounts or [])
    config = config_in_container(release, pod, container)
    ip = pod.backend.partition(":")[0]
    assert {e["endpoint"]["server_address"] for e in config["communicator"]} == {ip}
