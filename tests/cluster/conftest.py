"""Fixtures of the cluster tier: the chart installed with its webhook process running.

The control plane itself is the session-wide ``cluster`` fixture (``tests/cluster/fixtures.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.kube import Cluster
from tests.cluster.release import Release


@pytest.fixture(scope="module")
def release(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """The chart installed into gvirtus-system with default values and the local webhook
    process serving it; uninstalled at the end of the module."""
    installed = Release(cluster)
    installed.install()
    try:
        installed.start_webhook(tmp_path_factory.mktemp("release"))
        yield installed
    finally:
        installed.uninstall()
