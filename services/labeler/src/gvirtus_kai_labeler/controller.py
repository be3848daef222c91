"""Keeps the role labels on nodes: list, add what is missing, then watch and add it again.

The labeler only ever adds a label whose key is absent, and only with a precondition on the
node's resourceVersion, so an operator's value — or an operator's write racing ours — always wins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from gvirtus_kai_common.backoff import Backoff
from gvirtus_kai_common.kube import (
    LIST_CHUNK_SIZE,
    WATCH_WINDOW_SECONDS,
    ApiFailure,
    ListWatch,
    api_call,
)
from lightkube import AsyncClient
from lightkube.core.client import FieldSelector
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from gvirtus_kai_labeler.logic import label_patch, missing_labels
from gvirtus_kai_labeler.metrics import Metrics

log = logging.getLogger(__name__)

# A conflict means someone else wrote the node; after this many in a row, back off instead.
CONFLICT_RETRIES = 5
# Patches to the initial set of nodes in flight at once (all-nodes mode on a fresh cluster).
PARALLEL_PATCHES = 8


class NodeNotFound(Exception):
    """--once in per-node mode, and the node does not exist."""


class Labeler:
    def __init__(
        self,
        client: AsyncClient,
        wanted: Mapping[str, str],
        metrics: Metrics,
        *,
        node_name: str | None = None,
        backoff: Backoff | None = None,
        watch_window: float = WATCH_WINDOW_SECONDS,
        list_chunk_size: int = LIST_CHUNK_SIZE,
    ) -> None:
        """``node_name`` set: label that node only; None: every node of the cluster."""
        self._client = client
        self._wanted = dict(wanted)
        self._metrics = metrics
        self._node_name = node_name
        fields: FieldSelector | None = {"metadata.name": node_name} if node_name else None
        self._nodes = ListWatch(
            client,
            Node,
            listed=self._label_all,
            changed=self._node_changed,
            api_errors=metrics.api_errors,
            watch_restarts=metrics.watch_restarts,
            account="labeler",
            fields=fields,
            window=watch_window,
            backoff=backoff,
            chunk_size=list_chunk_size,
        )
        self._patches = asyncio.Semaphore(PARALLEL_PATCHES)
        self._running = False
        self.labels_added = 0

    @property
    def scope(self) -> str:
        return f"node {self._node_name}" if self._node_name else "all nodes"

    def healthy(self) -> bool:
        """The control loop runs and has made a step (event, window, retry) recently enough."""
        return self._running and self._nodes.healthy()

    # -- modes ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Label, then keep labelling on every change, until cancelled. Never returns otherwise:
        API errors, dropped connections and expired watches are retried."""
        self._running = True
        log.info("labeler running", extra={"scope": self.scope, "labels": self._wanted})
        try:
            await self._nodes.run()
        finally:
            self._running = False

    async def label_once(self, attempts: int = 5) -> int:
        """Add what is missing now, retrying transient failures ``attempts`` times; return the
        number of labels added. Raises the last ``ApiFailure``, or ``NodeNotFound``."""
        added_before = self.labels_added
        for attempt in range(1, attempts + 1):
            try:
                nodes, _ = await self._nodes.list()
                if self._node_name and not nodes:
                    raise NodeNotFound(f"node {self._node_name!r} not found")
                await self._label_all(nodes)
                return self.labels_added - added_before
            except ApiFailure as failure:
                if attempt == attempts:
                    self._metrics.api_errors.labels(failure.verb, failure.code_label).inc()
                    raise
                await self._nodes.pause_after(failure)
        raise AssertionError("unreachable")

    # -- steps ------------------------------------------------------------------------------------

    async def _label_all(self, nodes: list[Node]) -> None:
        """Add what each listed node lacks, a few patches at a time."""
        if self._node_name and not nodes:
            log.warning("node not found; waiting for it to appear", extra={"node": self._node_name})
        outcomes = await asyncio.gather(
            *(self._label_bounded(node) for node in nodes), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _label_bounded(self, node: Node) -> None:
        async with self._patches:
            await self._label(node)

    async def _node_changed(self, event_type: str, node: Node) -> None:
        if event_type in ("ADDED", "MODIFIED"):
            await self._label(node)

    async def _label(self, node: Node) -> None:
        """Add the labels ``node`` lacks, on condition that it is unchanged since it was read."""
        for _ in range(CONFLICT_RETRIES):
            metadata = node.metadata
            if metadata is None or not metadata.name:
                return
            name = metadata.name
            missing = missing_labels(metadata.labels, self._wanted)
            if not missing:
                return
            try:
                if not metadata.resourceVersion:
                    raise ApiFailure("patch", 409, "no resourceVersion to write against")
                with api_call("patch"):
                    await self._client.patch(
                        Node,
                        name,
                        label_patch(missing, metadata.resourceVersion),
                        patch_type=PatchType.MERGE,
                    )
            except ApiFailure as failure:
                if failure.code == 404:
                    log.info("node deleted; nothing to label", extra={"node": name})
                    return
                if failure.code != 409:
                    raise
                self._metrics.conflicts.inc()
                log.info("node changed since read; deciding again", extra={"node": name})
                try:
                    with api_call("get"):
                        node = await self._client.get(Node, name)
                except ApiFailure as gone:
                    if gone.code == 404:
                        return
                    raise
                continue
            for key, value in missing.items():
                self.labels_added += 1
                self._metrics.labels_added.labels(key).inc()
                log.info("label added", extra={"node": name, "key": key, "value": value})
            return
        raise ApiFailure("patch", 409, f"node kept changing over {CONFLICT_RETRIES} attempts")
