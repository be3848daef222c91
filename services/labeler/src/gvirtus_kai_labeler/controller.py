"""Keeps the role labels on nodes: list, add what is missing, then watch and add it again.

The labeler only ever adds a label whose key is absent, and only with a precondition on the
node's resourceVersion, so an operator's value — or an operator's write racing ours — always wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Iterator, Mapping

import httpx2
from gvirtus_kai_common.backoff import Backoff
from lightkube import ApiError, AsyncClient
from lightkube.core.client import FieldSelector
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from gvirtus_kai_labeler.logic import label_patch, missing_labels, rbac_hint
from gvirtus_kai_labeler.metrics import Metrics

log = logging.getLogger(__name__)

# A conflict means someone else wrote the node; after this many in a row, back off instead.
CONFLICT_RETRIES = 5
# Watches are re-opened this often (from the last seen version) so a silently dead connection —
# which never errors — cannot leave the labeler deaf for longer.
WATCH_WINDOW_SECONDS = 300.0
# Patches to the initial set of nodes in flight at once (all-nodes mode on a fresh cluster).
PARALLEL_PATCHES = 8


class ApiFailure(Exception):
    """A Kubernetes API call that did not succeed: an HTTP error status or no answer at all."""

    def __init__(self, verb: str, code: int | None, message: str) -> None:
        super().__init__(f"{verb}: {code or 'no answer'}: {message}")
        self.verb = verb
        self.code = code
        self.message = message

    @property
    def code_label(self) -> str:
        return str(self.code) if self.code is not None else "connection"


class NodeNotFound(Exception):
    """--once in per-node mode, and the node does not exist."""


@contextlib.contextmanager
def api_call(verb: str) -> Iterator[None]:
    """Turn lightkube/httpx errors raised by the block into ``ApiFailure(verb, ...)``."""
    try:
        yield
    except ApiError as error:
        # A Status object: from a response body, or from an ERROR event inside a watch stream.
        status = error.status
        code = status.code if status is not None else None
        message = status.message if status is not None and status.message else str(error)
        raise ApiFailure(verb, code, message) from error
    except httpx2.HTTPStatusError as error:
        # Watch requests answered with an error status surface without a decoded Status.
        raise ApiFailure(verb, error.response.status_code, str(error)) from error
    except httpx2.HTTPError as error:
        raise ApiFailure(verb, None, str(error) or type(error).__name__) from error


async def _close(events: AsyncIterable[object]) -> None:
    """Close a watch stream now rather than whenever the garbage collector gets to it."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


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
        list_chunk_size: int = 500,
    ) -> None:
        """``node_name`` set: label that node only; None: every node of the cluster."""
        self._client = client
        self._wanted = dict(wanted)
        self._metrics = metrics
        self._node_name = node_name
        self._fields: FieldSelector | None = {"metadata.name": node_name} if node_name else None
        self._backoff = backoff or Backoff(initial=0.2, maximum=30.0)
        self._watch_window = watch_window
        self._list_chunk_size = list_chunk_size  # nodes per list page on large clusters
        self._resource_version: str | None = None  # where the next watch resumes
        self._expired_in_a_row = 0
        self._patches = asyncio.Semaphore(PARALLEL_PATCHES)
        self._last_beat = time.monotonic()
        self._running = False
        self.labels_added = 0

    @property
    def scope(self) -> str:
        return f"node {self._node_name}" if self._node_name else "all nodes"

    def healthy(self) -> bool:
        """The control loop runs and has made a step (event, window, retry) recently enough."""
        allowed = self._watch_window + self._backoff.maximum + 30.0
        return self._running and time.monotonic() - self._last_beat < allowed

    def _beat(self) -> None:
        self._last_beat = time.monotonic()

    # -- modes ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Label, then keep labelling on every change, until cancelled. Never returns otherwise:
        API errors, dropped connections and expired watches are retried."""
        self._running = True
        log.info("labeler running", extra={"scope": self.scope, "labels": self._wanted})
        try:
            while True:
                self._beat()
                try:
                    if self._resource_version is None:
                        self._resource_version = await self._label_listed_nodes()
                        self._backoff.reset()
                    await self._watch()
                except ApiFailure as failure:
                    await self._recover(failure)
                except Exception:
                    # A bug or a surprise from the client library must not end the DaemonSet pod's
                    # job; log it fully and start over from a fresh list.
                    log.exception("unexpected error; listing again after a pause")
                    self._resource_version = None
                    await asyncio.sleep(self._backoff.next_delay())
        finally:
            self._running = False

    async def label_once(self, attempts: int = 5) -> int:
        """Add what is missing now, retrying transient failures ``attempts`` times; return the
        number of labels added. Raises the last ``ApiFailure``, or ``NodeNotFound``."""
        added_before = self.labels_added
        for attempt in range(1, attempts + 1):
            try:
                await self._label_listed_nodes(require_node=True)
                return self.labels_added - added_before
            except ApiFailure as failure:
                self._count_error(failure)
                if attempt == attempts:
                    raise
                await self._pause_after(failure)
        raise AssertionError("unreachable")

    # -- steps ------------------------------------------------------------------------------------

    async def _label_listed_nodes(self, *, require_node: bool = False) -> str:
        """List the nodes in scope, add what each lacks; return the version to watch from."""
        with api_call("list"):
            listing = self._client.list(Node, fields=self._fields, chunk_size=self._list_chunk_size)
            nodes = [node async for node in listing]
            version = listing.resourceVersion
        if self._node_name and not nodes:
            if require_node:
                raise NodeNotFound(f"node {self._node_name!r} not found")
            log.warning("node not found; waiting for it to appear", extra={"node": self._node_name})
        outcomes = await asyncio.gather(
            *(self._label_bounded(node) for node in nodes), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return version

    async def _label_bounded(self, node: Node) -> None:
        async with self._patches:
            await self._label(node)

    async def _watch(self) -> None:
        """Follow changes from ``_resource_version`` for one window, labelling as they come."""
        events = self._client.watch(
            Node, fields=self._fields, resource_version=self._resource_version
        )
        try:
            async with asyncio.timeout(self._watch_window):
                with api_call("watch"):
                    async for event_type, node in events:
                        self._beat()
                        self._expired_in_a_row = 0
                        if event_type in ("ADDED", "MODIFIED"):
                            await self._label(node)
                        # Advance only once handled: after a failure the event is seen again.
                        if node.metadata is not None and node.metadata.resourceVersion:
                            self._resource_version = node.metadata.resourceVersion
                        self._backoff.reset()
        except TimeoutError:
            self._metrics.watch_restarts.labels("window").inc()
            log.debug("watch window over; watching again", extra={"scope": self.scope})
        finally:
            await _close(events)

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

    # -- failures ---------------------------------------------------------------------------------

    async def _recover(self, failure: ApiFailure) -> None:
        if failure.verb == "watch" and failure.code == 410:
            # The version we resume from is older than the server's history: routine, list again.
            self._metrics.watch_restarts.labels("expired").inc()
            log.info("watch expired (410 Gone); listing again", extra={"scope": self.scope})
            self._resource_version = None
            self._expired_in_a_row += 1
            if self._expired_in_a_row > 1:  # a fresh list expiring again: do not spin
                await asyncio.sleep(self._backoff.next_delay())
            return
        self._count_error(failure)
        if failure.verb == "watch":
            self._metrics.watch_restarts.labels("error").inc()
        await self._pause_after(failure)

    def _count_error(self, failure: ApiFailure) -> None:
        self._metrics.api_errors.labels(failure.verb, failure.code_label).inc()

    async def _pause_after(self, failure: ApiFailure) -> None:
        delay = self._backoff.next_delay()
        details = {
            "verb": failure.verb,
            "code": failure.code_label,
            "error": failure.message,
            "retry_in_seconds": round(delay, 3),
        }
        if failure.code == 403:
            log.error(rbac_hint(failure.verb), extra=details)
        else:
            log.warning("kubernetes API call failed; retrying", extra=details)
        await asyncio.sleep(delay)
