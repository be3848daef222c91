"""An in-process fake Kubernetes API server speaking the real JSON over real HTTP/1.1 on loopback.

Controllers under test talk to it through their normal client (lightkube, httpx, kubectl-style
kubeconfig); tests drive it as an operator would (``set_labels``, ``patch``, ``delete``) and inject
the failures a real cluster produces: 5xx and 403 answers, dropped watch connections, expired
resourceVersions (410 Gone) and a whole API outage (``stop()``/``start()`` on the same port).

What it implements, as the real server does:

* GET / LIST (``labelSelector``, ``fieldSelector`` on ``metadata.name``/``metadata.namespace``,
  list ``metadata.resourceVersion``, paging with ``limit``/``continue``) / POST / PUT / PATCH /
  DELETE for cluster-scoped and namespaced resources of any registered type (core and
  ``apis/<group>``).
* One global, monotonically increasing resourceVersion; a write that changes nothing keeps it.
* Optimistic concurrency: ``metadata.resourceVersion`` in a PUT body or a merge patch is a
  precondition, answered with 409 Conflict when stale.
* PATCH as ``merge-patch+json``, ``strategic-merge-patch+json`` (applied as a merge patch: exact
  for maps such as labels and annotations, lists are replaced whole) and ``json-patch+json``.
* WATCH: chunked newline-delimited events ADDED/MODIFIED/DELETED/BOOKMARK/ERROR, replay from a
  bounded event history, ``410 Expired`` as an ERROR event for versions older than the history
  (what the apiserver's watch cache does), objects leaving a label selector arrive as DELETED,
  ``allowWatchBookmarks`` and ``timeoutSeconds``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonpatch

from tests.kubeapi.selectors import FieldSelector, LabelSelector, SelectorError

JsonObject = dict[str, Any]

_REASONS = {
    400: ("BadRequest", "Bad Request"),
    403: ("Forbidden", "Forbidden"),
    404: ("NotFound", "Not Found"),
    405: ("MethodNotAllowed", "Method Not Allowed"),
    409: ("Conflict", "Conflict"),
    410: ("Expired", "Gone"),
    415: ("UnsupportedMediaType", "Unsupported Media Type"),
    422: ("Invalid", "Unprocessable Entity"),
    429: ("TooManyRequests", "Too Many Requests"),
    500: ("InternalError", "Internal Server Error"),
    503: ("ServiceUnavailable", "Service Unavailable"),
}

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True)
class ResourceType:
    group: str  # "" for the core API
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_name(self) -> str:
        """``nodes`` for core types, ``deployments.apps`` otherwise (kubectl's spelling)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


BUILTIN_TYPES = (
    ResourceType("", "v1", "nodes", "Node", namespaced=False),
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False),
    ResourceType("", "v1", "pods", "Pod", namespaced=True),
    ResourceType("", "v1", "services", "Service", namespaced=True),
    ResourceType("", "v1", "configmaps", "ConfigMap", namespaced=True),
    ResourceType("", "v1", "secrets", "Secret", namespaced=True),
    ResourceType("apps", "v1", "daemonsets", "DaemonSet", namespaced=True),
    ResourceType("apps", "v1", "deployments", "Deployment", namespaced=True),
)


class ApiStatusError(Exception):
    """Answered as a ``Status`` object with this HTTP code."""

    def __init__(self, code: int, message: str, details: JsonObject | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def status_object(code: int, message: str, details: JsonObject | None = None) -> JsonObject:
    """A ``meta/v1 Status`` failure, shaped as the API server sends it."""
    status: JsonObject = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, ("Unknown", ""))[0],
        "code": code,
    }
    if details is not None:
        status["details"] = details
    return status


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any
    status: int = 0  # the HTTP status answered (200 for watches, even when they end in ERROR)

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


@dataclass
class _Fault:
    remaining: int
    status: int
    method: str | None
    path: str | None
    watch: bool | None

    def applies_to(self, request: RecordedRequest) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == request.method)
            and (self.path is None or request.path.startswith(self.path))
            and (self.watch is None or self.watch == request.is_watch)
        )


@dataclass
class _Event:
    resource_version: int
    type: str  # ADDED, MODIFIED, DELETED
    rtype: ResourceType
    obj: JsonObject
    old: JsonObject | None


_END = "END"  # close the watch stream cleanly (terminating chunk)
_ABORT = "ABORT"  # drop the connection mid-stream


@dataclass(eq=False)  # identity-hashed: kept in a set
class _Watch:
    rtype: ResourceType
    namespace: str | None
    labels: LabelSelector | None
    fields: FieldSelector | None
    bookmarks: bool
    writer: asyncio.StreamWriter
    queue: asyncio.Queue[_Event | JsonObject | str] = field(default_factory=asyncio.Queue)

    def selects(self, obj: JsonObject) -> bool:
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        if self.labels is not None and not self.labels.matches(obj):
            return False
        return self.fields is None or self.fields.matches(obj)

    def translate(self, event: _Event) -> tuple[str, JsonObject] | None:
        """The event as this watcher sees it: objects entering/leaving its selectors are
        ADDED/DELETED, as with the real server."""
        if event.rtype != self.rtype:
            return None
        now = self.selects(event.obj)
        before = event.old is not None and self.selects(event.old)
        if event.type == "MODIFIED":
            if now and before:
                return "MODIFIED", event.obj
            if now:
                return "ADDED", event.obj
            if before:
                return "DELETED", event.obj
            return None
        return (event.type, event.obj) if now else None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubeApi:
    """Start with ``await start()`` (or ``async with``); ``url`` is then ``http://127.0.0.1:<port>``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history_size: int = 1000,
        bookmark_interval: float = 60.0,
        user: str = "system:serviceaccount:gvirtus-system:gvirtus-labeler",
    ) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.user = user
        self.requests: list[RecordedRequest] = []
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        for rtype in BUILTIN_TYPES:
            self.register(rtype)
        self._objects: dict[tuple[ResourceType, str | None, str], JsonObject] = {}
        self._resource_version = 1
        self._history: deque[_Event] = deque(maxlen=history_size)
        self._compacted = 1  # watches from an older resourceVersion get 410 Expired
        self._watches: set[_Watch] = set()
        self._faults: list[_Fault] = []
        self._forbidden: set[tuple[str, str]] = set()  # (verb, qualified resource)
        self._hooks: list[tuple[Callable[[RecordedRequest], bool], Callable[[], object]]] = []
        self._changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (again, after ``stop()``) on the same port; stored objects survive a restart."""
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """An API outage: stop listening and cut every open connection, watches included."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.drop_watches()
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()
        await asyncio.sleep(0)

    async def __aenter__(self) -> FakeKubeApi:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig naming this server (JSON is valid YAML), for clients reading KUBECONFIG."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config, indent=2))
        return path

    # -- test controls: objects, as an operator would change them ----------------------------------

    def register(self, rtype: ResourceType) -> None:
        """Serve another resource type (e.g. a CRD) under its API path."""
        self._types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def resource_type(self, name: str) -> ResourceType:
        """Look up ``nodes``, ``pods``, ``deployments.apps``..."""
        for rtype in self._types.values():
            if name in (rtype.plural, rtype.qualified_name):
                return rtype
        raise KeyError(f"unknown resource {name!r}")

    @property
    def resource_version(self) -> int:
        return self._resource_version

    def create(self, resource: str, obj: JsonObject) -> JsonObject:
        rtype = self.resource_type(resource)
        namespace = obj.get("metadata", {}).get("namespace") if rtype.namespaced else None
        if rtype.namespaced and not namespace:
            raise ValueError("namespaced objects need metadata.namespace")
        return copy.deepcopy(self._create(rtype, namespace, obj))

    def add_node(self, name: str, labels: dict[str, str] | None = None) -> JsonObject:
        return self.create("nodes", {"metadata": {"name": name, "labels": dict(labels or {})}})

    def get(self, resource: str, name: str, namespace: str | None = None) -> JsonObject | None:
        obj = self._objects.get((self.resource_type(resource), namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def labels(
        self, name: str, resource: str = "nodes", namespace: str | None = None
    ) -> dict[str, str]:
        obj = self.get(resource, name, namespace)
        if obj is None:
            raise KeyError(f"{resource} {name!r} not found")
        return dict(obj["metadata"].get("labels") or {})

    def patch(
        self, resource: str, name: str, patch: JsonObject, namespace: str | None = None
    ) -> JsonObject:
        """A merge patch without precondition (``kubectl patch --type merge``)."""
        rtype = self.resource_type(resource)
        current = self._require(rtype, namespace, name)
        return copy.deepcopy(self._update(rtype, current, merge_patch(current, patch)))

    def set_labels(
        self,
        name: str,
        labels: dict[str, str | None],
        resource: str = "nodes",
        namespace: str | None = None,
    ) -> JsonObject:
        """``kubectl label --overwrite``: a ``None`` value removes the label."""
        return self.patch(resource, name, {"metadata": {"labels": labels}}, namespace)

    def remove_label(self, name: str, key: str, resource: str = "nodes") -> JsonObject:
        return self.set_labels(name, {key: None}, resource)

    def delete(self, resource: str, name: str, namespace: str | None = None) -> None:
        rtype = self.resource_type(resource)
        self._delete(rtype, self._require(rtype, namespace, name))

    async def wait_until(self, condition: Callable[[], bool], within: float = 10.0) -> float:
        """Wait until ``condition()`` holds, checked after every write, answered request and watch
        (dis)connection; returns the seconds it took."""
        started = time.monotonic()
        async with asyncio.timeout(within):
            while not condition():
                changed = self._changed
                await changed.wait()
        return time.monotonic() - started

    # -- test controls: failures -------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        *,
        method: str | None = None,
        path: str | None = None,
        watch: bool | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with a ``Status`` error of ``status``."""
        self._faults.append(_Fault(count, status, method, path, watch))

    def forbid(self, verb: str, resource: str) -> None:
        """Deny ``verb`` (get, list, watch, patch, update, create, delete) on ``resource`` with 403,
        as a missing RBAC rule does, until ``permit()``."""
        self._forbidden.add((verb, self.resource_type(resource).qualified_name))

    def permit(self, verb: str, resource: str) -> None:
        self._forbidden.discard((verb, self.resource_type(resource).qualified_name))

    def before_next(
        self, matches: Callable[[RecordedRequest], bool], action: Callable[[], object]
    ) -> None:
        """Run ``action`` once, right before handling the next request ``matches`` accepts — e.g. an
        operator's write landing between a controller's read and its write."""
        self._hooks.append((matches, action))

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream (no terminating chunk), like a lost link."""
        for watch in list(self._watches):
            watch.queue.put_nowait(_ABORT)
            watch.writer.transport.abort()

    def end_watches(self) -> None:
        """Close every open watch cleanly, as the server does when ``timeoutSeconds`` expires."""
        for watch in list(self._watches):
            watch.queue.put_nowait(_END)

    def expire_history(self, *, notify_watchers: bool = True) -> None:
        """Forget all events so far (etcd compaction): watching from any older version gets 410.
        With ``notify_watchers`` open watches also receive the ERROR 410 event and end, as when the
        watch cache falls too far behind."""
        self._history.clear()
        self._compacted = self._resource_version
        if notify_watchers:
            for watch in list(self._watches):
                watch.queue.put_nowait(self._expired(watch_from=0))
                watch.queue.put_nowait(_END)

    def inject_watch_event(self, event: JsonObject) -> None:
        """Send ``event`` (e.g. an ERROR with a 500 Status) on every open watch, as is; an ERROR
        ends the stream afterwards, as the real server does."""
        for watch in list(self._watches):
            watch.queue.put_nowait(event)
            if event.get("type") == "ERROR":
                watch.queue.put_nowait(_END)

    def send_bookmarks(self) -> None:
        for watch in list(self._watches):
            if watch.bookmarks:
                watch.queue.put_nowait(self._bookmark(watch.rtype))

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def requests_to(self, method: str, path: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and (path is None or r.path == path)]

    # -- storage -----------------------------------------------------------------------------------

    def _require(self, rtype: ResourceType, namespace: str | None, name: str) -> JsonObject:
        obj = self._objects.get((rtype, namespace, name))
        if obj is None:
            raise ApiStatusError(
                404,
                f'{rtype.qualified_name} "{name}" not found',
                {
                    "name": name,
                    "kind": rtype.plural,
                    **({"group": rtype.group} if rtype.group else {}),
                },
            )
        return obj

    def _next_version(self) -> int:
        self._resource_version += 1
        return self._resource_version

    def _record(
        self, event_type: str, rtype: ResourceType, obj: JsonObject, old: JsonObject | None
    ) -> None:
        event = _Event(int(obj["metadata"]["resourceVersion"]), event_type, rtype, obj, old)
        if len(self._history) == self._history.maxlen:
            self._compacted = self._history[0].resource_version
        self._history.append(event)
        for watch in self._watches:
            watch.queue.put_nowait(event)
        self._notify()

    def _notify(self) -> None:
        """Wake ``wait_until`` callers to check their condition again."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _create(self, rtype: ResourceType, namespace: str | None, body: JsonObject) -> JsonObject:
        metadata = body.get("metadata") or {}
        name = metadata.get("name")
        if not name:
            raise ApiStatusError(422, f"{rtype.kind} is invalid: metadata.name: Required value")
        if (rtype, namespace, name) in self._objects:
            raise ApiStatusError(
                409,
                f'{rtype.qualified_name} "{name}" already exists',
                {"name": name, "kind": rtype.plural},
            )
        obj = copy.deepcopy(body)
        obj["kind"], obj["apiVersion"] = rtype.kind, rtype.api_version
        obj["metadata"] = {
            **metadata,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": _now(),
            "resourceVersion": str(self._next_version()),
        }
        if namespace is not None:
            obj["metadata"]["namespace"] = namespace
        self._objects[(rtype, namespace, name)] = obj
        self._record("ADDED", rtype, obj, None)
        return obj

    def _update(self, rtype: ResourceType, current: JsonObject, proposed: JsonObject) -> JsonObject:
        """Store ``proposed`` over ``current``; its resourceVersion, when set, must match."""
        metadata = current["metadata"]
        wanted_version = (proposed.get("metadata") or {}).get("resourceVersion")
        if wanted_version and wanted_version != metadata["resourceVersion"]:
            raise ApiStatusError(
                409,
                f'Operation cannot be fulfilled on {rtype.qualified_name} "{metadata["name"]}": '
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
                {"name": metadata["name"], "kind": rtype.plural},
            )
        new_metadata = proposed.get("metadata") or {}
        for immutable in ("name", "namespace", "uid"):
            if new_metadata.get(immutable, metadata.get(immutable)) != metadata.get(immutable):
                raise ApiStatusError(
                    422,
                    f'{rtype.kind} "{metadata["name"]}" is invalid: metadata.{immutable}: '
                    "Invalid value: field is immutable",
                )
        new = copy.deepcopy(proposed)
        new["kind"], new["apiVersion"] = rtype.kind, rtype.api_version
        new["metadata"] = {
            **new_metadata,
            **{
                k: metadata[k]
                for k in ("name", "namespace", "uid", "creationTimestamp")
                if k in metadata
            },
            "resourceVersion": metadata["resourceVersion"],
        }
        if new == current:  # a no-op write keeps the version and sends no event
            return current
        new["metadata"]["resourceVersion"] = str(self._next_version())
        self._objects[(rtype, metadata.get("namespace"), metadata["name"])] = new
        self._record("MODIFIED", rtype, new, current)
        return new

    def _delete(self, rtype: ResourceType, current: JsonObject) -> JsonObject:
        metadata = current["metadata"]
        del self._objects[(rtype, metadata.get("namespace"), metadata["name"])]
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = str(self._next_version())
        self._record("DELETED", rtype, gone, current)
        return gone

    def _select(
        self,
        rtype: ResourceType,
        namespace: str | None,
        labels: LabelSelector | None,
        fields: FieldSelector | None,
    ) -> Iterator[JsonObject]:
        for (kind, obj_namespace, _), obj in sorted(
            self._objects.items(), key=lambda item: (item[0][1] or "", item[0][2])
        ):
            if kind != rtype or (namespace is not None and obj_namespace != namespace):
                continue
            if (labels is None or labels.matches(obj)) and (fields is None or fields.matches(obj)):
                yield obj

    def _expired(self, watch_from: int) -> JsonObject:
        message = (
            f"too old resource version: {watch_from} ({self._compacted})"
            if watch_from
            else "The resourceVersion for the provided watch is too old."
        )
        return {"type": "ERROR", "object": status_object(410, message)}

    def _bookmark(self, rtype: ResourceType) -> JsonObject:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": rtype.kind,
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(self._resource_version)},
            },
        }

    # -- HTTP --------------------------------------------------------------------------------------

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._connections.add(writer)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    break
                keep_open = await self._handle(request, writer)
                if not keep_open:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> RecordedRequest | None:
        request_line = await reader.readline()
        if not request_line.strip():
            return None
        method, target, _ = request_line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        url = urlsplit(target)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        return RecordedRequest(method, url.path, dict(parse_qsl(url.query)), headers, body)

    async def _send(
        self, writer: asyncio.StreamWriter, request: RecordedRequest, code: int, body: JsonObject
    ) -> None:
        request.status = code
        payload = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {code} {_REASONS.get(code, ('', 'OK'))[1] or 'OK'}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        writer.write(head.encode() + payload)
        await writer.drain()

    async def _handle(self, request: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        self.requests.append(request)
        for index, (matches, action) in enumerate(self._hooks):
            if matches(request):
                del self._hooks[index]
                action()
                break
        try:
            for fault in self._faults:
                if fault.applies_to(request):
                    fault.remaining -= 1
                    raise ApiStatusError(fault.status, f"injected failure ({fault.status})")
            rtype, namespace, name = self._route(request.path)
            verb = self._verb(request, name)
            self._authorize(verb, rtype, namespace, name)
            if verb == "watch":
                return await self._watch(request, writer, rtype, namespace, name)
            code, body = self._dispatch(verb, request, rtype, namespace, name)
        except ApiStatusError as error:
            code, body = error.code, status_object(error.code, error.message, error.details)
        except SelectorError as error:
            code, body = 400, status_object(400, str(error))
        await self._send(writer, request, code, body)
        self._notify()
        return True

    def _route(self, path: str) -> tuple[ResourceType, str | None, str | None]:
        parts = path.strip("/").split("/")
        if parts[:1] == ["api"] and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiStatusError(404, "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        rtype = self._types.get((group, version, rest[0]))
        if rtype is None or len(rest) > 2 or (namespace is not None and not rtype.namespaced):
            raise ApiStatusError(404, "the server could not find the requested resource")
        return rtype, namespace, rest[1] if len(rest) == 2 else None

    @staticmethod
    def _verb(request: RecordedRequest, name: str | None) -> str:
        if request.method == "GET":
            if request.is_watch:
                return "watch"
            return "get" if name else "list"
        verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        verb = verbs.get(request.method)
        if verb is None or (verb == "create") == (name is not None):
            raise ApiStatusError(405, f"the server does not allow this method: {request.method}")
        return verb

    def _authorize(
        self, verb: str, rtype: ResourceType, namespace: str | None, name: str | None
    ) -> None:
        if (verb, rtype.qualified_name) not in self._forbidden:
            return
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        subject = f'{rtype.qualified_name} "{name}"' if name else rtype.qualified_name
        raise ApiStatusError(
            403,
            f'{subject} is forbidden: User "{self.user}" cannot {verb} resource '
            f'"{rtype.plural}" in API group "{rtype.group}" {scope}',
            {"name": name or "", "kind": rtype.plural},
        )

    def _dispatch(
        self,
        verb: str,
        request: RecordedRequest,
        rtype: ResourceType,
        namespace: str | None,
        name: str | None,
    ) -> tuple[int, JsonObject]:
        if verb == "list":
            return 200, self._list(request, rtype, namespace)
        if verb == "create":
            if not isinstance(request.body, dict):
                raise ApiStatusError(400, "the body of the request was in an unknown format")
            return 201, self._create(rtype, namespace, request.body)
        assert name is not None
        current = self._require(rtype, namespace, name)
        if verb == "get":
            return 200, current
        if verb == "delete":
            return 200, self._delete(rtype, current)
        if verb == "update":
            if not isinstance(request.body, dict):
                raise ApiStatusError(400, "the body of the request was in an unknown format")
            return 200, self._update(rtype, current, request.body)
        return 200, self._update(rtype, current, self._apply_patch(request, current))

    def _list(
        self, request: RecordedRequest, rtype: ResourceType, namespace: str | None
    ) -> JsonObject:
        """A list, paged by ``limit``/``continue``. Later pages report the first page's version;
        unlike the real server they show the objects as they are now, not as of that version."""
        labels, fields = self._selectors(request)
        items = [
            {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
            for obj in self._select(rtype, namespace, labels, fields)
        ]
        version, start = self._resource_version, 0
        if token := request.query.get("continue"):
            try:
                version, start = json.loads(base64.urlsafe_b64decode(token))
            except ValueError:
                raise ApiStatusError(400, "continue key is not valid") from None
            if version < self._compacted:
                raise ApiStatusError(
                    410,
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter.",
                )
        limit = int(request.query.get("limit") or 0)
        end = start + limit if limit > 0 else len(items)
        metadata: JsonObject = {"resourceVersion": str(version)}
        if end < len(items):
            next_page = json.dumps([version, end]).encode()
            metadata["continue"] = base64.urlsafe_b64encode(next_page).decode()
            metadata["remainingItemCount"] = len(items) - end
        return {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version,
            "metadata": metadata,
            "items": items[start:end],
        }

    @staticmethod
    def _apply_patch(request: RecordedRequest, current: JsonObject) -> JsonObject:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
            if not isinstance(request.body, dict):
                raise ApiStatusError(400, "the body of the request was in an unknown format")
            patched: JsonObject = merge_patch(current, request.body)
            return patched
        if content_type == JSON_PATCH:
            try:
                result: JsonObject = jsonpatch.apply_patch(current, request.body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
                raise ApiStatusError(
                    422, f"the server rejected our request due to an error in our request: {error}"
                ) from error
            return result
        raise ApiStatusError(
            415,
            f"the body of the request was in an unknown format - accepted "
            f"media types include: {JSON_PATCH}, {MERGE_PATCH}, "
            f'{STRATEGIC_MERGE_PATCH}; got "{content_type}"',
        )

    @staticmethod
    def _selectors(request: RecordedRequest) -> tuple[LabelSelector | None, FieldSelector | None]:
        label_text = request.query.get("labelSelector")
        field_text = request.query.get("fieldSelector")
        return (
            LabelSelector(label_text) if label_text else None,
            FieldSelector(field_text) if field_text else None,
        )

    async def _watch(
        self,
        request: RecordedRequest,
        writer: asyncio.StreamWriter,
        rtype: ResourceType,
        namespace: str | None,
        name: str | None,
    ) -> bool:
        if name is not None:
            raise ApiStatusError(405, "watch of a single object: use fieldSelector=metadata.name")
        labels, fields = self._selectors(request)
        watch = _Watch(
            rtype,
            namespace,
            labels,
            fields,
            request.query.get("allowWatchBookmarks") == "true",
            writer,
        )
        # Everything up to the first await is atomic, so no event falls between replay and live.
        initial = self._initial_events(watch, request.query.get("resourceVersion", ""))
        self._watches.add(watch)
        self._notify()
        request.status = 200
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        deadline = None
        if "timeoutSeconds" in request.query:
            deadline = time.monotonic() + float(request.query["timeoutSeconds"])
        try:
            for initial_item in initial:
                if isinstance(initial_item, str):
                    return await self._end_stream(writer)
                self._write_event(writer, initial_item)
            await writer.drain()
            while True:
                wait = self.bookmark_interval if watch.bookmarks else None
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return await self._end_stream(writer)
                    wait = remaining if wait is None else min(wait, remaining)
                try:
                    async with asyncio.timeout(wait):
                        item = await watch.queue.get()
                except TimeoutError:
                    if watch.bookmarks and (deadline is None or time.monotonic() < deadline):
                        self._write_event(writer, self._bookmark(rtype))
                        await writer.drain()
                    continue
                if item == _ABORT:
                    writer.transport.abort()
                    return False
                if item == _END:
                    return await self._end_stream(writer)
                if isinstance(item, _Event):
                    seen = watch.translate(item)
                    if seen is None:
                        continue
                    self._write_event(writer, {"type": seen[0], "object": seen[1]})
                elif isinstance(item, dict):
                    self._write_event(writer, item)
                await writer.drain()
        finally:
            self._watches.discard(watch)
            self._notify()

    def _initial_events(self, watch: _Watch, since: str) -> list[JsonObject | str]:
        if since in ("", "0"):
            # "Get state and start at most recent": synthetic ADDED for what exists now.
            return [
                {"type": "ADDED", "object": obj}
                for obj in self._select(watch.rtype, watch.namespace, watch.labels, watch.fields)
            ]
        try:
            version = int(since)
        except ValueError:
            raise ApiStatusError(400, f'invalid resource version "{since}"') from None
        if version < self._compacted:
            return [self._expired(version), _END]
        events: list[JsonObject | str] = []
        for event in self._history:
            if event.resource_version > version and (seen := watch.translate(event)) is not None:
                events.append({"type": seen[0], "object": seen[1]})
        return events

    @staticmethod
    def _write_event(writer: asyncio.StreamWriter, event: JsonObject) -> None:
        line = json.dumps(event).encode() + b"\n"
        writer.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")

    @staticmethod
    async def _end_stream(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True
