"""The Kubernetes API access of the services that use it (the ``kube`` extra: lightkube): the
client, API failures as one exception type, and the list-then-watch loop that follows objects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

import httpx2
from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig
from lightkube.core.client import FieldSelector, LabelSelector
from lightkube.core.resource import api_info
from lightkube.resources.core_v1 import Node, Pod
from lightkube.resources.discovery_v1 import EndpointSlice
from prometheus_client import Counter

from gvirtus_kai_common.backoff import Backoff
from gvirtus_kai_common.logs import clip

log = logging.getLogger(__name__)

# Watches are opened again from the last version this often, so a connection that died
# silently cannot leave a service deaf for longer.
WATCH_WINDOW_SECONDS = 300.0
LIST_CHUNK_SIZE = 500  # objects per list page on large clusters

# The kinds the services follow; constrained so each use is checked as that kind.
R = TypeVar("R", Node, Pod, EndpointSlice)

# lightkube's HTTP client logs every request at info: one line per watch event is noise.
_CHATTY_LOGGERS = ("httpx2", "httpcore2")


def api_client(program: str, log_level: str) -> AsyncClient | None:
    """A client from the in-cluster configuration, else ``KUBECONFIG``; None (logged) when
    neither is usable. Writes are attributed to ``program`` (the field manager)."""
    if log_level != "debug":
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        config = KubeConfig.from_env()
    except (ConfigError, OSError) as error:
        log.error(
            "no Kubernetes API configuration: not in a cluster and no usable KUBECONFIG",
            extra={"error": str(error)},
        )
        return None
    return AsyncClient(config, field_manager=program)


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


def forbidden_hint(account: str, verb: str, resource: str) -> str:
    """What to grant when the API server answers 403 to ``verb`` on ``resource``."""
    return f"forbidden: grant '{verb}' on '{resource}' to the {account}'s ServiceAccount"


class ApiErrors:
    """How a service accounts for its failed API calls, the same for every call: counted by verb
    and code, logged with the error clipped, and a 403 logged as an error naming what to grant.

    ``counter`` (labels verb, code) may be None where nothing is counted (a part used alone).
    """

    def __init__(self, counter: Counter | None, account: str) -> None:
        self._counter = counter
        self.account = account

    def record(
        self,
        failure: ApiFailure,
        resource: str,
        what: str,
        *,
        level: int = logging.WARNING,
        **details: object,
    ) -> None:
        """Count ``failure`` and log ``what`` happened, with ``details`` (a 403: the hint)."""
        if self._counter is not None:
            self._counter.labels(failure.verb, failure.code_label).inc()
        extra = {
            "resource": resource,
            "verb": failure.verb,
            "code": failure.code_label,
            "error": clip(failure.message),
            **details,
        }
        if failure.code == 403:
            log.error(forbidden_hint(self.account, failure.verb, resource), extra=extra)
        else:
            log.log(level, what, extra=extra)


class ListWatch(Generic[R]):
    """Keeps a handler up to date with one kind of object, for as long as it runs.

    Lists, then watches from the listed version one window at a time, so a connection that died
    silently is replaced; lists again when that version has expired (410). Any other failure,
    the handler's own API calls included, is counted, logged and retried with backoff, and the
    watch resumes after the last event the handler finished, so none is lost.
    """

    def __init__(
        self,
        client: AsyncClient,
        resource: type[R],
        *,
        listed: Callable[[list[R]], Awaitable[None]],
        changed: Callable[[str, R], Awaitable[None]],
        api_errors: Counter,
        watch_restarts: Counter,
        account: str,
        namespace: str | None = None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        window: float = WATCH_WINDOW_SECONDS,
        backoff: Backoff | None = None,
        chunk_size: int = LIST_CHUNK_SIZE,
    ) -> None:
        """``api_errors`` is labelled by verb and code, ``watch_restarts`` by resource and
        reason; ``account`` names the ServiceAccount in the hint logged on a 403."""
        self._client = client
        self._resource: type[R] = resource
        self.name = api_info(resource).plural  # "nodes", "pods": for logs and metrics
        self._listed: Callable[[list[R]], Awaitable[None]] = listed
        self._changed: Callable[[str, R], Awaitable[None]] = changed
        self._api_errors = ApiErrors(api_errors, account)
        self._watch_restarts = watch_restarts
        # Only namespaced kinds take a namespace (lightkube's ALL_NS: every one).
        self._scope: dict[str, Any] = {"namespace": namespace} if namespace else {}
        self._labels = labels
        self._fields = fields
        self._window = window
        self._backoff = backoff or Backoff(initial=0.2, maximum=30.0)
        self._chunk_size = chunk_size
        self._version: str | None = None  # where the next watch resumes
        self._expired_in_a_row = 0
        self._last_step = time.monotonic()

    def healthy(self) -> bool:
        """The loop has made a step (event, window, retry) recently enough."""
        allowed = self._window + self._backoff.maximum + 30.0
        return time.monotonic() - self._last_step < allowed

    async def list(self) -> tuple[list[R], str]:
        """The objects in scope, and the version they were read at."""
        with api_call("list"):
            listing = self._client.list(
                self._resource,
                labels=self._labels,
                fields=self._fields,
                chunk_size=self._chunk_size,
                **self._scope,
            )
            items = [item async for item in listing]
        return items, listing.resourceVersion

    async def run(self) -> None:
        """Never returns; cancel it to stop."""
        while True:
            self._last_step = time.monotonic()
            try:
                if self._version is None:
                    items, version = await self.list()
                    await self._listed(items)
                    # Only once handled: after a failure the objects are listed again.
                    self._version = version
                    self._backoff.reset()
                await self._watch()
            except ApiFailure as failure:
                await self._recover(failure)
            except Exception:
                # A bug or a surprise from the client library must not end the service's job:
                # log it fully and start over from a fresh list.
                log.exception("unexpected error; listing again after a pause", extra=self._about())
                self._version = None
                await asyncio.sleep(self._backoff.next_delay())

    async def _watch(self) -> None:
        events = self._client.watch(
            self._resource,
            labels=self._labels,
            fields=self._fields,
            resource_version=self._version,
            **self._scope,
        )
        try:
            async with asyncio.timeout(self._window):
                with api_call("watch"):
                    async for event_type, obj in events:
                        self._last_step = time.monotonic()
                        self._expired_in_a_row = 0
                        await self._changed(event_type, obj)
                        # Advance only once handled: after a failure the event is seen again.
                        if obj.metadata is not None and obj.metadata.resourceVersion:
                            self._version = obj.metadata.resourceVersion
                        self._backoff.reset()
        except TimeoutError:
            self._watch_restarts.labels(self.name, "window").inc()
            log.debug("watch window over; watching again", extra=self._about())
        finally:
            # Closed now rather than whenever the garbage collector gets to it.
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _recover(self, failure: ApiFailure) -> None:
        if failure.verb == "watch" and failure.code == 410:
            # The version we resume from is older than the server's history: routine, list again.
            self._watch_restarts.labels(self.name, "expired").inc()
            log.info("watch expired (410 Gone); listing again", extra=self._about())
            self._version = None
            self._expired_in_a_row += 1
            if self._expired_in_a_row > 1:  # a fresh list expiring again: do not spin
                await asyncio.sleep(self._backoff.next_delay())
            return
        if failure.verb == "watch":
            self._watch_restarts.labels(self.name, "error").inc()
        await self.pause_after(failure)

    async def pause_after(self, failure: ApiFailure) -> None:
        """Count and log a failed call, then wait the backoff's next delay."""
        delay = self._backoff.next_delay()
        self._api_errors.record(
            failure,
            self.name,
            "kubernetes API call failed; retrying",
            retry_in_seconds=round(delay, 3),
        )
        await asyncio.sleep(delay)

    def _about(self) -> dict[str, str]:
        return {"resource": self.name}
