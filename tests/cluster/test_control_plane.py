"""The test control plane itself: binaries found as documented, start-up failures explained,
nodes Ready as a kubelet would report them, identities minted with TokenRequest."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightkube.models.core_v1 import Container, PodSpec, ServicePort, ServiceSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.authentication_v1 import SelfSubjectReview
from lightkube.resources.core_v1 import Node, Pod, Service, ServiceAccount
from lightkube.resources.discovery_v1 import EndpointSlice

from tests.cluster import controlplane
from tests.cluster.controlplane import ControlPlaneError, start_component, wait_healthy
from tests.cluster.kube import GPU, NODES, Cluster, wait_until
from tests.cluster.release import ensure_namespace


def test_a_missing_binary_fails_naming_make_tools(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    monkeypatch.setattr(controlplane, "TOOLS_BIN", tmp_path / "bin")

    with pytest.raises(
        ControlPlaneError, match=r"kube-apiserver is in neither .* run `make tools`"
    ):
        controlplane.binary("kube-apiserver")


def test_kubebuilder_assets_win_over_the_built_tools(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assets, built = tmp_path / "assets", tmp_path / "bin"
    for folder in (assets, built):
        folder.mkdir()
        (folder / "etcd").write_text("#!/bin/sh\n")
    monkeypatch.setattr(controlplane, "TOOLS_BIN", built)

    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    from_assets = controlplane.binary("etcd")
    monkeypatch.delenv("KUBEBUILDER_ASSETS")
    from_tools = controlplane.binary("etcd")

    assert (from_assets, from_tools) == (assets / "etcd", built / "etcd")


def test_a_component_that_exits_at_start_fails_with_the_tail_of_its_log(tmp_path: Path) -> None:
    etcd = start_component("etcd", ["--no-such-flag"], tmp_path)

    with pytest.raises(ControlPlaneError) as failure:
        wait_healthy(etcd, lambda: False, "healthy", timeout=60)

    message = str(failure.value)
    assert message.startswith("etcd exited with code")
    assert "no-such-flag" in message  # etcd's own complaint, from its log


def test_every_node_is_ready_untainted_and_reports_its_gpu_capacity(cluster: Cluster) -> None:
    for spec in NODES:
        node = cluster.client.get(Node, spec.name)
        assert node.metadata is not None
        assert node.spec is not None
        assert node.status is not None
        conditions = {c.type: c.status for c in node.status.conditions or []}
        assert conditions["Ready"] == "True", spec.name
        assert not node.spec.taints, spec.name
        assert dict(spec.labels).items() <= (node.metadata.labels or {}).items()
        allocatable = node.status.allocatable or {}
        assert allocatable.get(GPU, "0") == str(spec.gpus), spec.name


def test_a_token_for_a_service_account_authenticates_as_that_account(cluster: Cluster) -> None:
    ensure_namespace(cluster, "identity")
    cluster.client.create(ServiceAccount(metadata=ObjectMeta(name="reader")), namespace="identity")

    client = cluster.client_for(cluster.token_for("identity", "reader"))
    review = client.create(SelfSubjectReview())

    assert review.status is not None
    assert review.status.userInfo is not None
    assert review.status.userInfo.username == "system:serviceaccount:identity:reader"


def test_a_pod_marked_running_is_published_as_a_ready_endpoint_of_its_service(
    cluster: Cluster,
) -> None:
    ensure_namespace(cluster, "endpoints")
    labels = {"app": "echo"}
    cluster.client.create(
        Service(
            metadata=ObjectMeta(name="echo", namespace="endpoints"),
            spec=ServiceSpec(selector=labels, ports=[ServicePort(port=80, targetPort=8080)]),
        )
    )
    cluster.client.create(
        Pod(
            metadata=ObjectMeta(name="echo-1", namespace="endpoints", labels=labels),
            spec=PodSpec(containers=[Container(name="echo", image="registry.example.com/echo")]),
        )
    )

    cluster.mark_pod_running("endpoints", "echo-1", "203.0.113.7")

    def ready_addresses() -> list[str]:
        slices = cluster.client.list(
            EndpointSlice, namespace="endpoints", labels={"kubernetes.io/service-name": "echo"}
        )
        return [
            address
            for endpoint_slice in slices
            for endpoint in endpoint_slice.endpoints or []
            if endpoint.conditions is not None and endpoint.conditions.ready
            for address in endpoint.addresses
        ]

    assert wait_until(ready_addresses, "the pod's endpoint") == ["203.0.113.7"]
