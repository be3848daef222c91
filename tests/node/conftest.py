"""Fixtures of the real-node tier: the nodes (started once per session) and the chart on them.

The chart is installed once with default values (``chart.install``) and shared; a test that
changes it (an upgrade, an uninstall) puts it back, so every test finds the default release
ready. ``release`` re-installs it when an earlier test failed half-way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.node import chart
from tests.node.cluster import NodeCluster, up
from tests.node.kube import Kube


@pytest.fixture(scope="session")
def nodes() -> Iterator[NodeCluster]:
    cluster = up(0)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kube(nodes: NodeCluster) -> Kube:
    return Kube(nodes)


@pytest.fixture
def release(kube: Kube) -> Kube:
    """The default release, installed and ready."""
    if not chart.installed(kube.kubeconfig):
        chart.install(kube.kubeconfig)
    kube.wait_release_ready()
    return kube


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Real pods take their time on a loaded 2-core machine: a node test (with the session's node
    start-up or a chart upgrade inside it) gets ten minutes, not the suites' two."""
    for item in items:
        if item.nodeid.startswith("tests/node/"):
            item.add_marker(pytest.mark.timeout(600))
