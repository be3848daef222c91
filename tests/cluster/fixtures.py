"""The session-wide control plane fixture, shared by the cluster tier and the labeler's API tests
(``tests/conftest.py`` makes it visible to every suite; it starts only when a test asks for it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.controlplane import ControlPlane, ControlPlaneError
from tests.cluster.kube import NODES, Cluster, PodReaper
from tests.dnsserver import LoopbackDnsServer


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler with the nodes of
    ``kube.NODES``; every process is killed at the end of the session, pass or fail."""
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    try:
        plane.start()
    except ControlPlaneError as error:
        pytest.fail(f"the test control plane did not start: {error}", pytrace=False)
    dns = LoopbackDnsServer().start()
    reaper = PodReaper(plane).start()
    try:
        test_cluster = Cluster(plane, dns)
        for node in NODES:
            test_cluster.add_node(node)
        yield test_cluster
    finally:
        reaper.stop()
        dns.stop()
        plane.stop()
