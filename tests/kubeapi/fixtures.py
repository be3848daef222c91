"""pytest fixtures around the fake API server; import them into a suite's conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.kubeapi.server import FakeKubeApi


@pytest.fixture
async def kube_api() -> AsyncIterator[FakeKubeApi]:
    """A started fake API server on a free loopback port, stopped after the test."""
    async with FakeKubeApi(bookmark_interval=0.5) as api:
        yield api


@pytest.fixture
def kubeconfig(kube_api: FakeKubeApi, tmp_path: Path) -> Path:
    """A kubeconfig file naming ``kube_api``, for clients that read ``KUBECONFIG``."""
    return kube_api.write_kubeconfig(tmp_path / "kubeconfig")
