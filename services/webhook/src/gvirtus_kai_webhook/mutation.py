"""The pod mutation: pure functions shared by the webhook and the ``gvirtus-kai inject`` CLI.

``mutate_pod(pod, settings, backend_address)`` returns the JSON Patch and warnings for one pod,
or raises ``MutationDenied`` with a message for the user. A pod is placed on one of two paths:

- gated (``placement=controller``): the scheduling gate ``gvirtus.io/backend`` but no address;
  the placement controller writes the annotations and removes the gate later;
- pinned (``placement=dns``): the ``gvirtus.io/backend`` annotation naming ``backend_address``
  (one ready backend pod's IPv4 address, found by the caller) and, for ``mount``, the frontend
  config for it.

Either way the containers read what the annotations hold when they start, which is after the gate
is gone: ``mount`` through a projected file, ``sed`` through an environment variable its wrapper
turns into properties.json.

``needs_backend_address`` tells the caller whether to look an address up at all.

The patch reconciles: it is computed from what the pod already holds, so a pod that carries our
own earlier output yields an empty patch, and a stale earlier output (another backend address,
port, home or strategy) is brought up to date with the fewest operations. Lists that another
webhook may have filled (volumes, volumeMounts, env) are never replaced as a whole.
"""

from __future__ import annotations

import ipaddress
import posixpath
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeGuard

from gvirtus_kai_common.gvirtus import (
    BACKEND_ANNOTATION,
    BACKEND_GATE,
    PROPERTIES_ANNOTATION,
    THREADS_ANNOTATION,
    communicator_entry,
    compact_json,
    parse_threads,
    properties_json,
)
from gvirtus_kai_common.logs import clip
from pydantic import ValidationError

from gvirtus_kai_webhook.models import (
    AddOperation,
    JsonPatchOperation,
    PodShape,
    RemoveOperation,
    ReplaceOperation,
    json_pointer,
)
from gvirtus_kai_webhook.settings import STRATEGIES, Settings

STRATEGY_ANNOTATION = "gvirtus.io/strategy"
HOME_ANNOTATION = "gvirtus.io/home"
CONTAINERS_ANNOTATION = "gvirtus.io/containers"

PROPERTIES_VOLUME = "gvirtus-properties"
PROPERTIES_FILE = "properties.json"
CONFIG_ENV = "GVIRTUS_CONFIG"
# The sed wrapper's input: the pinned ``ip:port``, resolved by the kubelet at container start.
BACKEND_ENV = "GVIRTUS_KAI_BACKEND"
# First line of the sed wrapper script: how an already-wrapped container is recognised.
SED_MARKER = "# gvirtus-kai:sed"
_SHELL = ("/bin/sh", "-c")
# "$0" of the wrapper; everything after it is the original command, reached as "$@".
_SHELL_ARG0 = "--"

_EMPTY: Mapping[str, Any] = {}
_NO_ITEMS: Sequence[Any] = ()
Tokens = tuple[str | int, ...]
_Matcher = Callable[[Mapping[str, Any]], bool]


class MutationDenied(Exception):
    """The pod cannot be mutated; ``str(exc)`` is the message returned to the user."""


@dataclass(frozen=True)
class Mutation:
    """A pod's JSON Patch and warnings."""

    patch: list[JsonPatchOperation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def is_enabled(pod: Mapping[str, Any], settings: Settings) -> bool:
    labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
    return labels.get(settings.enable_label) == "true"


def needs_backend_address(pod: Mapping[str, Any], settings: Settings) -> bool:
    """Whether ``mutate_pod`` pins this pod (and so needs an address): every pod with
    ``placement=dns``. A pod whose strategy annotation is invalid needs none: it is denied
    without a lookup."""
    strategy = _mapping(_mapping(pod.get("metadata")).get("annotations")).get(
        STRATEGY_ANNOTATION, settings.strategy
    )
    return strategy in STRATEGIES and settings.placement == "dns"


def pinned_address(pod: Mapping[str, Any], settings: Settings) -> str | None:
    """The IPv4 address the pod's ``gvirtus.io/backend`` annotation names with our backend port
    (an earlier pinning, kept while that backend is ready), or None."""
    value = _mapping(_mapping(pod.get("metadata")).get("annotations")).get(BACKEND_ANNOTATION)
    if not isinstance(value, str):
        return None
    address, _, port = value.rpartition(":")
    if port != str(settings.backend_port):
        return None
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        return None


@dataclass(frozen=True)
class _Plan:
    """Everything that depends only on the settings and the backend address."""

    address: str | None  # None: no pod may be pinned (the caller looked nothing up)
    port: str
    plugins: tuple[str, ...]
    threads: int
    strategy: str
    placement: str
    home: str
    gpu_resource: str
    selector_key: str
    selector_value: str


def _plan(settings: Settings, backend_address: str | None) -> _Plan:
    address = None
    if backend_address is not None:
        # GVirtuS only accepts a dotted-quad IPv4 server_address; anything else is a caller bug.
        try:
            address = str(ipaddress.IPv4Address(backend_address))
        except ValueError:
            raise ValueError(
                f"the backend address must be an IPv4 address (GVirtuS takes no host names and "
                f"no IPv6), not {clip(repr(backend_address))}"
            ) from None
    return _Plan(
        address=address,
        port=str(settings.backend_port),
        plugins=settings.plugins,
        threads=settings.frontend_threads,
        strategy=settings.strategy,
        placement=settings.placement,
        home=settings.default_gvirtus_home,
        gpu_resource=settings.gpu_resource,
        selector_key=settings.frontend_label_key,
        selector_value=settings.frontend_label_value,
    )


def config_path(home: str) -> str:
    return posixpath.join(home, "etc", PROPERTIES_FILE)


# Markers replaced by shell variables in the entry template; JSON encodes them verbatim.
_IP_MARK, _PORT_MARK = "@GVIRTUS_KAI_IP@", "@GVIRTUS_KAI_PORT@"


def sed_script(home: str, threads: int, plugins: Sequence[str]) -> str:
    """Shell script (builtins only) that writes ``<home>/etc/properties.json`` whole for the
    backend in ``$GVIRTUS_KAI_BACKEND``, then execs "$@"; it exits 1 with a message on stderr,
    before the program starts, when the address is not IPv4 or the file is not written.

    The text is byte for byte ``properties_json(ip, port, plugins, threads)``: every thread
    finds its entry, whatever the layout of the file the image shipped.
    """
    entry = compact_json(communicator_entry(_IP_MARK, _PORT_MARK, plugins))
    head, _, rest = entry.partition(_IP_MARK)
    middle, _, tail = rest.partition(_PORT_MARK)
    quoted_entry = f'{shlex.quote(head)}"$ip"{shlex.quote(middle)}"$port"{shlex.quote(tail)}'
    env = f"${{{BACKEND_ENV}:-}}"
    return "\n".join(
        (
            f"{SED_MARKER} writes the GVirtuS frontend config, then runs the original command",
            "set -eu",
            f"f={shlex.quote(config_path(home))}",
            "fail() { printf 'gvirtus-kai: %s; the program was not started\\n' \"$*\" >&2; "
            "exit 1; }",
            f"b={env}",
            f'[ -n "$b" ] || fail "no GVirtuS backend pinned yet (annotation {BACKEND_ANNOTATION} '
            'is empty)"',
            "ip=${b%:*} port=${b##*:} rest=${b%:*}. n=0",
            'while [ -n "$rest" ]; do',
            "  o=${rest%%.*} rest=${rest#*.} n=$((n + 1))",
            "  case $o in [0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5]) ;; *) n=5 ;; esac",
            "done",
            "case $port in ''|0*|*[!0-9]*) n=5 ;; esac",
            '[ "$ip:$port" = "$b" ] && [ "$n" -eq 4 ] && [ "${#port}" -le 5 ] '
            '&& [ "$port" -le 65535 ] ||',
            f'  fail "{BACKEND_ANNOTATION}=$b is not an IPv4 address and port (GVirtuS takes no '
            'host names and no IPv6)"',
            '[ -f "$f" ] || fail "$f not found: is annotation '
            f'{HOME_ANNOTATION} the GVirtuS directory of this image?"',
            f"e={quoted_entry}",
            "c=$e i=1",
            f'while [ "$i" -lt {int(threads)} ]; do c=$c,$e i=$((i + 1)); done',
            'j=\'{"communicator":[\'"$c"\'],"secure_application":false}\'',
            f'{{ printf %s "$j" >"$f"; }} 2>/dev/null || fail "cannot write $f (annotation '
            f'{STRATEGY_ANNOTATION}: mount needs no writable file)"',
            'got= && IFS= read -r got <"$f" || :',
            '[ "$got" = "$j" ] || fail "$f does not hold the config just written"',
            'exec "$@"',
        )
    )


def is_sed_wrapped(command: object) -> TypeGuard[list[Any]]:
    return (
        isinstance(command, list)
        and len(command) >= 4
        and command[0] == _SHELL[0]
        and command[1] == _SHELL[1]
        and isinstance(command[2], str)
        and command[2].startswith(SED_MARKER)
        and command[3] == _SHELL_ARG0
    )


class _Target(NamedTuple):
    list_name: str  # "containers" or "initContainers"
    position: int  # in its list ("index" would shadow tuple.index)
    container: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.container.get("name", ""))

    def tokens(self, *more: str | int) -> Tokens:
        return ("spec", self.list_name, self.position, *more)


def mutate_pod(pod: Mapping[str, Any], settings: Settings, backend_address: str | None) -> Mutation:
    """The patch for ``pod``. ``backend_address`` (IPv4) is required when
    ``needs_backend_address`` says so, and ignored for a gated pod."""
    _check_shape(pod)
    plan = _plan(settings, backend_address)
    metadata = pod.get("metadata")
    annotations = _mapping(_mapping(metadata).get("annotations"))
    spec = _mapping(pod.get("spec"))

    strategy = _strategy(annotations, plan)
    home = _home(annotations, plan)
    threads = _threads(annotations, plan)
    targets = _targets(spec, annotations, plan.gpu_resource)
    warnings: list[str] = []
    ops: list[JsonPatchOperation] = []
    config_file = config_path(home)
    gated = plan.placement == "controller"
    if not gated and plan.address is None:
        raise ValueError("this pod is pinned at admission: a backend address is needed")

    gates = ("spec", "schedulingGates")
    if gated:
        # Appended to the pod's own gates; an address copied from another pod is dropped, so
        # the pod carries none until the controller writes the one it chose.
        _upsert(ops, gates, spec.get("schedulingGates"), _Owned("gate", ""), _is_backend_gate)
        for key in (PROPERTIES_ANNOTATION, BACKEND_ANNOTATION):
            if key in annotations:
                ops.append(_remove(json_pointer("metadata", "annotations", key)))
    else:
        assert plan.address is not None  # checked above
        # A copied gate would hold the pinned pod back for a controller that may not run.
        _remove_where(ops, gates, _sequence(spec.get("schedulingGates")), _is_backend_gate)
        pinned = {BACKEND_ANNOTATION: f"{plan.address}:{plan.port}"}
        if strategy == "mount":
            properties = properties_json(plan.address, plan.port, plan.plugins, threads)
            pinned = {PROPERTIES_ANNOTATION: properties, **pinned}
        _set_entries(ops, pod, ("metadata", "annotations"), pinned)

    if strategy == "mount":

        def is_mount_conflict(item: Mapping[str, Any]) -> bool:
            return _is_properties(item) or item.get("mountPath") == config_file

        volume = _Owned("volume", config_file)
        _upsert(ops, ("spec", "volumes"), spec.get("volumes"), volume, _is_properties)
        for target in targets:
            command = target.container.get("command")
            if is_sed_wrapped(command):  # switching from sed: give the original command back
                ops.append(_replace(target.tokens("command"), list(command[4:])))
            mounts = target.container.get("volumeMounts")
            mount = _Owned("mount", config_file)
            _upsert(ops, target.tokens("volumeMounts"), mounts, mount, is_mount_conflict)
    else:
        script = sed_script(home, threads, plan.plugins)
        for target in targets:
            _wrap_command(ops, target, script, warnings)
        # A gated pod's annotation is already being removed above.
        _drop_mount_strategy(ops, spec, annotations if not gated else _EMPTY)

    for target in targets:
        tokens, env = target.tokens("env"), target.container.get("env")
        if strategy == "mount" and isinstance(env, list):  # a switch from sed
            _remove_where(ops, tokens, env, _is_backend_env)
            env = [item for item in env if not (_is_mapping(item) and _is_backend_env(item))]
        env_var = _Owned("env", config_file)
        _upsert(ops, tokens, env, env_var, _is_config_env)
        if strategy == "sed":
            # Indices as they are once the first upsert has applied.
            after = _upserted(env, env_var, _is_config_env)
            _upsert(ops, tokens, after, _Owned("backend", ""), _is_backend_env)

    _node_selector(ops, pod, spec, plan)
    if not any(_gpu_quantity(t.container, "limits", plan.gpu_resource) for t in targets):
        # The API server asks for short warnings (long ones may be truncated): name the fix only.
        names = ", ".join(t.name for t in targets)
        warnings.append(
            f"GVirtuS: add resources.limits {plan.gpu_resource}: 1 to {names[:60]} "
            f"to get a virtual GPU slot"
        )
    return Mutation(ops, warnings)


# --- decisions that may deny -----------------------------------------------------------------

MAX_SHAPE_ERRORS = 3


def _check_shape(pod: Mapping[str, Any]) -> None:
    """Refuse a pod whose fields we read have the wrong type (say, ``containers: ["app"]``)."""
    try:
        PodShape.model_validate(pod)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)[:MAX_SHAPE_ERRORS]
        ]
        more = exc.error_count() - len(problems)
        suffix = f" (and {more} more)" if more > 0 else ""
        raise MutationDenied(f"the pod is malformed: {clip('; '.join(problems))}{suffix}") from None


def _strategy(annotations: Mapping[str, Any], plan: _Plan) -> str:
    value = annotations.get(STRATEGY_ANNOTATION)
    if value is None:
        return plan.strategy
    if value not in STRATEGIES:
        raise MutationDenied(
            f"annotation {STRATEGY_ANNOTATION}={clip(repr(value))} is not a GVirtuS strategy; "
            f"valid values: {', '.join(STRATEGIES)}"
        )
    return str(value)


def _home(annotations: Mapping[str, Any], plan: _Plan) -> str:
    value = annotations.get(HOME_ANNOTATION)
    if value is None:
        return plan.home
    text = str(value)
    if not text.startswith("/") or any(ch < " " for ch in text) or ".." in text.split("/"):
        raise MutationDenied(
            f"annotation {HOME_ANNOTATION}={clip(repr(text))} must be an absolute path without "
            "'..' (the GVirtuS installation directory inside the image, e.g. /usr/local/gvirtus)"
        )
    return posixpath.normpath(text)


def _threads(annotations: Mapping[str, Any], plan: _Plan) -> int:
    value = annotations.get(THREADS_ANNOTATION)
    if value is None:
        return plan.threads
    try:
        return parse_threads(value)
    except ValueError as error:
        raise MutationDenied(str(error)) from None


def _gpu_quantity(container: Mapping[str, Any], kind: str, resource: str) -> bool:
    quantity = _mapping(_mapping(container.get("resources")).get(kind)).get(resource)
    return quantity is not None and str(quantity).strip() not in ("", "0")


def _targets(spec: Mapping[str, Any], annotations: Mapping[str, Any], gpu: str) -> list[_Target]:
    containers = _sequence(spec.get("containers"))
    init_containers = _sequence(spec.get("initContainers"))
    if not containers:
        raise MutationDenied("the pod has no containers to give the GVirtuS frontend config to")
    requested = annotations.get(CONTAINERS_ANNOTATION)
    if requested is not None:
        return _named_targets(str(requested), containers, init_containers)
    gpu_users = [
        _Target("containers", i, _mapping(c))
        for i, c in enumerate(containers)
        if _gpu_quantity(_mapping(c), "limits", gpu) or _gpu_quantity(_mapping(c), "requests", gpu)
    ]
    return gpu_users or [_Target("containers", 0, _mapping(containers[0]))]


def _named_targets(
    requested: str, containers: Sequence[Any], init_containers: Sequence[Any]
) -> list[_Target]:
    by_name: dict[str, _Target] = {}
    # Regular containers win over init containers of the same name (names are unique per pod).
    for list_name, items in (("initContainers", init_containers), ("containers", containers)):
        for i, item in enumerate(items):
            container = _mapping(item)
            by_name[str(container.get("name", ""))] = _Target(list_name, i, container)
    names = list(dict.fromkeys(n.strip() for n in requested.split(",") if n.strip()))
    if not names:
        raise MutationDenied(
            f"annotation {CONTAINERS_ANNOTATION} is empty; list container names, e.g. 'app,worker'"
        )
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = [str(_mapping(c).get("name", "")) for c in containers]
        known += [f"{_mapping(c).get('name', '')} (init)" for c in init_containers]
        raise MutationDenied(
            f"annotation {CONTAINERS_ANNOTATION} names {clip(', '.join(map(repr, unknown)))}, "
            f"not a container of this pod; its containers are: {clip(', '.join(known))}"
        )
    return [by_name[n] for n in names]


# --- building the patch ----------------------------------------------------------------------


class _Owned(NamedTuple):
    """A list entry the mutation owns, named by what it is built from."""

    kind: Literal["volume", "mount", "env", "backend", "gate"]
    config_file: str

    def build(self) -> dict[str, Any]:
        """A new copy of the entry."""
        if self.kind == "gate":
            return {"name": BACKEND_GATE}
        if self.kind == "volume":
            return _properties_volume()
        if self.kind == "mount":
            return _properties_mount(self.config_file)
        if self.kind == "backend":
            # In the API server's defaulted form (fieldRef.apiVersion), as the volume below.
            field_path = f"metadata.annotations['{BACKEND_ANNOTATION}']"
            return {
                "name": BACKEND_ENV,
                "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}},
            }
        return {"name": CONFIG_ENV, "value": self.config_file}


def _properties_volume() -> dict[str, Any]:
    # Written in the API server's defaulted form (fieldRef.apiVersion, defaultMode) so that a
    # reinvocation, which sees the defaulted object, finds it equal and leaves it alone.
    field_path = f"metadata.annotations['{PROPERTIES_ANNOTATION}']"
    return {
        "name": PROPERTIES_VOLUME,
        "downwardAPI": {
            "items": [
                {"path": PROPERTIES_FILE, "fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}
            ],
            "defaultMode": 420,
        },
    }


def _properties_mount(config_file: str) -> dict[str, Any]:
    return {
        "name": PROPERTIES_VOLUME,
        "mountPath": config_file,
        "subPath": PROPERTIES_FILE,
        "readOnly": True,
    }


def _wrap_command(
    ops: list[JsonPatchOperation], target: _Target, script: str, warnings: list[str]
) -> None:
    command = target.container.get("command")
    name = clip(repr(target.name))
    if is_sed_wrapped(command):
        if command[2] != script:  # stale address, port or home: only the script changes
            ops.append(_replace_text(target.tokens("command", 2), script))
    elif isinstance(command, list) and command:
        ops.append(_replace(target.tokens("command"), [*_SHELL, script, _SHELL_ARG0, *command]))
    else:
        raise MutationDenied(
            f"container {name} has no explicit command, so the sed strategy cannot wrap "
            f"its entrypoint; set its command, or use the mount strategy (annotation "
            f"{STRATEGY_ANNOTATION}: mount)"
        )
    security = _mapping(target.container.get("securityContext"))
    if security.get("readOnlyRootFilesystem") is True:
        warnings.append(
            f"container {name} has a read-only root filesystem, so the sed strategy "
            f"cannot edit properties.json in place; use annotation {STRATEGY_ANNOTATION}: mount"
        )


def _drop_mount_strategy(
    ops: list[JsonPatchOperation], spec: Mapping[str, Any], annotations: Mapping[str, Any]
) -> None:
    """Remove what an earlier mount-strategy mutation left (a switch to sed): the read-only
    mount would hide the file sed edits."""
    volumes = _sequence(spec.get("volumes"))
    if any(_mapping(v).get("name") == PROPERTIES_VOLUME for v in volumes):
        for list_name in ("initContainers", "containers"):
            for i, item in enumerate(_sequence(spec.get(list_name))):
                mounts = _sequence(_mapping(item).get("volumeMounts"))
                tokens: Tokens = ("spec", list_name, i, "volumeMounts")
                _remove_where(ops, tokens, mounts, _is_properties)
        _remove_where(ops, ("spec", "volumes"), volumes, _is_properties)
    if PROPERTIES_ANNOTATION in annotations:
        path = json_pointer("metadata", "annotations", PROPERTIES_ANNOTATION)
        ops.append(_remove(path))


def _is_properties(item: Mapping[str, Any]) -> bool:
    return item.get("name") == PROPERTIES_VOLUME


def _is_config_env(item: Mapping[str, Any]) -> bool:
    return item.get("name") == CONFIG_ENV


def _is_backend_env(item: Mapping[str, Any]) -> bool:
    return item.get("name") == BACKEND_ENV


def _is_backend_gate(item: Mapping[str, Any]) -> bool:
    return item.get("name") == BACKEND_GATE


def _node_selector(
    ops: list[JsonPatchOperation], pod: Mapping[str, Any], spec: Mapping[str, Any], plan: _Plan
) -> None:
    selector = spec.get("nodeSelector")
    current = _mapping(selector).get(plan.selector_key)
    if current is not None and current != plan.selector_value:
        raise MutationDenied(
            f"the pod's nodeSelector sets {plan.selector_key}={clip(repr(current))}, but GVirtuS "
            f"pods must run on nodes labelled {plan.selector_key}={plan.selector_value}; "
            "remove that entry"
        )
    _set_entries(ops, pod, ("spec", "nodeSelector"), {plan.selector_key: plan.selector_value})


# --- JSON Patch primitives -------------------------------------------------------------------


def _set_entries(
    ops: list[JsonPatchOperation],
    root: Mapping[str, Any],
    path: tuple[str, ...],
    entries: Mapping[str, str],
) -> None:
    """Make the object at ``root[path[0]]...[path[-1]]`` hold ``entries``, adding the first
    absent object on the way whole (with all the entries in it)."""
    node: object = root
    for depth, token in enumerate(path):
        child = node.get(token) if _is_mapping(node) else None
        if not _is_mapping(child):
            ops.append(_add_nested(path, depth, dict(entries)))
            return
        node = child
    parent = _mapping(node)
    for key, value in entries.items():
        if key not in parent:
            ops.append(_add_text((*path, key), value))
        elif parent[key] != value:
            ops.append(_replace_text((*path, key), value))


def _upsert(
    ops: list[JsonPatchOperation],
    tokens: Tokens,
    items: object,
    entry: _Owned,
    is_ours: _Matcher,
) -> None:
    """Put ``entry`` in the list at ``tokens``: add the list, append, or fix matching entries.

    The first entry ``is_ours`` accepts is replaced when it differs; further ones are removed,
    since duplicate names or mount paths make a pod invalid.
    """
    if not isinstance(items, list):
        ops.append(_add_owned(tokens, entry, True))
        return
    matches = [i for i, item in enumerate(items) if _is_mapping(item) and is_ours(item)]
    if not matches:
        ops.append(_add_owned((*tokens, "-"), entry, False))
        return
    first, *rest = matches
    if items[first] != entry.build():
        ops.append(_replace_owned((*tokens, first), entry))
    for index in reversed(rest):  # descending, so earlier indices stay valid
        ops.append(_remove(_pointer((*tokens, index))))


def _upserted(items: object, entry: _Owned, is_ours: _Matcher) -> list[Any]:
    """The list ``_upsert`` leaves at its path, for operations that follow on the same list."""
    if not isinstance(items, list):
        return [entry.build()]
    matches = [i for i, item in enumerate(items) if _is_mapping(item) and is_ours(item)]
    if not matches:
        return [*items, entry.build()]
    first, rest = matches[0], set(matches[1:])
    return [entry.build() if i == first else v for i, v in enumerate(items) if i not in rest]


def _remove_where(
    ops: list[JsonPatchOperation], tokens: Tokens, items: Sequence[Any], is_ours: _Matcher
) -> None:
    for index in reversed(range(len(items))):
        item = items[index]
        if _is_mapping(item) and is_ours(item):
            ops.append(_remove(_pointer((*tokens, index))))


def _pointer(tokens: Tokens) -> str:
    return json_pointer(*tokens)


def _replace(tokens: Tokens, value: Any) -> ReplaceOperation:
    return ReplaceOperation(path=_pointer(tokens), value=value)


def _add_text(tokens: Tokens, value: str) -> AddOperation:
    return AddOperation(path=_pointer(tokens), value=value)


def _replace_text(tokens: Tokens, value: str) -> ReplaceOperation:
    return ReplaceOperation(path=_pointer(tokens), value=value)


def _add_nested(path: tuple[str, ...], depth: int, value: dict[str, str]) -> AddOperation:
    """Add ``path[: depth + 1]`` as the objects that lead from there to ``value``."""
    nested: Any = value
    for inner in reversed(path[depth + 1 :]):
        nested = {inner: nested}
    return AddOperation(path=_pointer(path[: depth + 1]), value=nested)


def _add_owned(tokens: Tokens, entry: _Owned, as_list: bool) -> AddOperation:
    value = entry.build()
    return AddOperation(path=_pointer(tokens), value=[value] if as_list else value)


def _replace_owned(tokens: Tokens, entry: _Owned) -> ReplaceOperation:
    return ReplaceOperation(path=_pointer(tokens), value=entry.build())


def _remove(path: str) -> RemoveOperation:
    return RemoveOperation(path=path)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if _is_mapping(value) else _EMPTY


def _is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    # Parsed JSON and YAML objects are dicts: an exact check, and cheaper than the Mapping ABC's.
    return isinstance(value, dict)


def _sequence(value: object) -> Sequence[Any]:
    return value if isinstance(value, list) else _NO_ITEMS
