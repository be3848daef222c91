"""Constants and helpers shared by the labeler tests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Mapping

from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType
from prometheus_client import CollectorRegistry

FRONTEND = "gvirtus.io/frontend.allowed"
BACKEND = "gvirtus.io/backend.allowed"
DEFAULTS = {FRONTEND: "true", BACKEND: "false"}
WAIT = 20.0  # generous bound for anything to happen on a loaded 2-core machine
_tests = itertools.count(1)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value; 0 when the labelled child was never touched."""
    return registry.get_sample_value(name, labels) or 0.0


class Nodes:
    """Node objects of one test on the real API server, written as an operator would (admin);
    short names (``n1``) get a per-test prefix, so tests never see each other's nodes.
    ``delete_all()`` removes them."""

    def __init__(self, admin: AsyncClient) -> None:
        self.admin = admin
        self.prefix = f"labeler-{next(_tests)}"
        self._created: list[str] = []

    def name(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    async def add(self, short: str, labels: Mapping[str, str] | None = None) -> Node:
        name = self.name(short)
        node = await self.admin.create(
            Node(metadata=ObjectMeta(name=name, labels=dict(labels or {})))
        )
        self._created.append(name)
        return node

    async def labels(self, short: str) -> dict[str, str]:
        node = await self.admin.get(Node, self.name(short))
        assert node.metadata is not None
        return dict(node.metadata.labels or {})

    async def set_labels(self, short: str, labels: Mapping[str, str | None]) -> Node:
        patch = {"metadata": {"labels": dict(labels)}}
        return await self.admin.patch(Node, self.name(short), patch, patch_type=PatchType.MERGE)

    async def remove_label(self, short: str, key: str) -> Node:
        return await self.set_labels(short, {key: None})

    async def has_labels(self, short: str, expected: Mapping[str, str]) -> float:
        """Wait until the node carries ``expected``; the seconds it took."""
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(WAIT):
            while True:
                if expected.items() <= (await self.labels(short)).items():
                    break
                await asyncio.sleep(0.02)
        return asyncio.get_running_loop().time() - started

    async def delete_all(self) -> None:
        for name in self._created:
            with contextlib.suppress(ApiError):  # already deleted by the test
                await self.admin.delete(Node, name)
