"""Is this a pod the API server accepts? The Pod schema of the chart's minimum Kubernetes (1.30)
plus the rules of the API server's pod validation that a schema cannot say.

The rules kept here are the ones a mutating webhook can break: unique names in list maps, mounts
that name a declared volume, sub-paths that stay inside the volume, downward API paths, extended
resources (limits required, requests equal to limits, whole numbers), label and annotation syntax
and the total annotation size.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from tests.chart import k8s_schemas

# The chart's kubeVersion floor.
KUBERNETES_MINOR = f"1.{k8s_schemas.OLDEST_MINOR}"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")  # the 1.30 rule (relaxed in 1.34)
_ANNOTATION_FIELD = re.compile(r"^metadata\.annotations\['(.*)'\]$")
_POD_FIELDS = {"metadata.name", "metadata.namespace", "metadata.uid", "metadata.labels"}
_POD_FIELDS |= {"metadata.annotations"}
_TOTAL_ANNOTATIONS_MAX = 256 * 1024
_EXTENDED = "nvidia.com/gpu"


def is_qualified_name(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if "/" in prefix:
        return False
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_NAME_PART.match(name))


# The schema allows null for optional fields, as the API server decodes null as absent: an
# absent map or list, or the empty string where a map holds strings.
def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _duplicates(values: Iterable[Any]) -> list[Any]:
    return [value for value, count in Counter(values).items() if count > 1]


def _is_local_descending(path: str) -> bool:
    return not path.startswith("/") and ".." not in path.split("/")


def _null_items(value: Any, path: str = "") -> Iterator[str]:
    """Paths of null list items: the schema allows them, the API server decodes them into empty
    objects that fail validation (a container without a name, ...)."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _null_items(child, f"{path}.{key}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            if child is None:
                yield f"{path}[{index}]: null item"
            yield from _null_items(child, f"{path}[{index}]")


def _schema_problems(pod: Any) -> list[str]:
    problems = [
        f"{'.'.join(map(str, error.absolute_path)) or '(pod)'}: {error.message[:200]}"
        # The Pod schema whatever the object claims to be: a wrong apiVersion is one more error.
        for error in k8s_schemas.validator(KUBERNETES_MINOR, "v1", "Pod").iter_errors(pod)
    ]
    return problems or list(_null_items(pod))


def _metadata_problems(metadata: dict[str, Any]) -> list[str]:
    problems = []
    annotations = _map(metadata.get("annotations"))
    problems += [f"annotation key {k!r}" for k in annotations if not is_qualified_name(k)]
    size = sum(len(k) + len(_text(v)) for k, v in annotations.items())
    if size > _TOTAL_ANNOTATIONS_MAX:
        problems.append(f"annotations total {size} bytes > {_TOTAL_ANNOTATIONS_MAX}")
    problems += [
        f"label {k!r}: {v!r}"
        for k, v in _map(metadata.get("labels")).items()
        if not _is_label(k, _text(v))
    ]
    return problems


def _is_label(key: str, value: str) -> bool:
    return is_qualified_name(key) and len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def _volume_problems(volumes: list[dict[str, Any]]) -> list[str]:
    names = [_text(volume["name"]) for volume in volumes]
    problems = [f"volume {name!r}: not a DNS label" for name in names if not _DNS_LABEL.match(name)]
    problems += [f"duplicate volume {name!r}" for name in _duplicates(names)]
    for volume in volumes:
        for item in _list(_map(volume.get("downwardAPI")).get("items")):
            if not _is_local_descending(_text(item["path"])):
                problems.append(f"volume {volume['name']!r}: downward API path {item['path']!r}")
            field_path = _text(_map(item.get("fieldRef")).get("fieldPath")) or "metadata.name"
            annotation = _ANNOTATION_FIELD.match(field_path)
            if annotation is None and field_path not in _POD_FIELDS:
                problems.append(f"volume {volume['name']!r}: fieldPath {field_path!r}")
            if annotation is not None and not is_qualified_name(annotation.group(1)):
                problems.append(f"volume {volume['name']!r}: fieldPath {field_path!r}")
    return problems


def _container_problems(container: dict[str, Any], volumes: set[str]) -> list[str]:
    name = _text(container["name"])
    problems = [] if _DNS_LABEL.match(name) else [f"container {name!r}: not a DNS label"]
    mounts = _list(container.get("volumeMounts"))
    paths = [_text(mount["mountPath"]) for mount in mounts]
    problems += [f"container {name!r}: duplicate mountPath {p!r}" for p in _duplicates(paths)]
    for mount in mounts:
        if mount["name"] not in volumes:
            problems.append(f"container {name!r}: mounts undeclared volume {mount['name']!r}")
        if not _is_local_descending(_text(mount.get("subPath"))):
            problems.append(f"container {name!r}: subPath {mount['subPath']!r}")
    env = [_text(entry["name"]) for entry in _list(container.get("env"))]
    problems += [f"container {name!r}: env name {e!r}" for e in env if not _ENV_NAME.match(e)]
    # Not an API error (a warning since 1.29), but never something the webhook may create.
    problems += [f"container {name!r}: duplicate env {e!r}" for e in _duplicates(env)]
    resources = _map(container.get("resources"))
    limits, requests = _map(resources.get("limits")), _map(resources.get("requests"))
    if _EXTENDED in requests and requests[_EXTENDED] != limits.get(_EXTENDED):
        problems.append(f"container {name!r}: {_EXTENDED} requests must equal limits")
    if _EXTENDED in limits and not str(limits[_EXTENDED]).isdigit():
        problems.append(f"container {name!r}: {_EXTENDED} must be a whole number")
    return problems


def pod_problems(pod: Any) -> list[str]:
    """Why the API server would refuse ``pod`` (empty when it would accept it)."""
    problems = _schema_problems(pod)
    if problems:
        return problems  # the rules below read fields the schema has checked
    spec = _map(pod.get("spec"))
    if not _list(spec.get("containers")):
        return ["spec.containers: required"]
    problems += _metadata_problems(_map(pod.get("metadata")))
    volumes = _list(spec.get("volumes"))
    problems += _volume_problems(volumes)
    everyone = _list(spec.get("initContainers")) + spec["containers"]
    names = [_text(container["name"]) for container in everyone]
    problems += [f"duplicate container name {n!r}" for n in _duplicates(names)]
    declared = {volume["name"] for volume in volumes}
    for container in everyone:
        problems += _container_problems(container, declared)
    problems += [
        f"nodeSelector {k!r}: {v!r}"
        for k, v in _map(spec.get("nodeSelector")).items()
        if not _is_label(k, _text(v))
    ]
    gates = [_text(gate["name"]) for gate in _list(spec.get("schedulingGates"))]
    problems += [f"duplicate scheduling gate {g!r}" for g in _duplicates(gates)]
    problems += [f"scheduling gate {g!r}" for g in gates if not is_qualified_name(g)]
    return problems
