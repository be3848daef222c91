"""Hypothesis strategies for AdmissionReviews of pods, valid ones and hostile ones.

``valid_pods`` draws pods the API server would accept (Kubernetes 1.30 rules, see
``pods.assert_valid_pod``): random containers and init containers, resources, commands, env,
volumes and mounts, labels, node selectors, scheduling gates, and the ``gvirtus.io/*``
annotations with valid and invalid values. Names come from small alphabets so that the pods
collide with each other and with what the webhook adds (its volume, mount path and variable).
``wrong_typed`` puts a value of another JSON type somewhere in such a pod.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from hypothesis import strategies as st

ADMISSION_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
ENABLE_LABEL = "gvirtus.io/enabled"
FRONTEND_LABEL = "gvirtus.io/frontend.allowed"
GPU = "nvidia.com/gpu"
STRATEGY = "gvirtus.io/strategy"
HOME = "gvirtus.io/home"
CONTAINERS = "gvirtus.io/containers"
# What the webhook owns in a pod; drawn on purpose, so that pods already hold them.
OWN_VOLUME = "gvirtus-properties"
OWN_ENV = "GVIRTUS_CONFIG"
OWN_PROPERTIES = "gvirtus.io/properties"
OWN_BACKEND = "gvirtus.io/backend"
OWN_GATE = "gvirtus.io/backend"

HOMES = ["/usr/local/gvirtus", "/opt/gvirtus", "/opt/gvirtus/", "/g", "/opt//gvirtus/./x"]
BAD_HOMES = ["", "relative/dir", "/opt/../etc", "/a\nb", "..", "/x/..", "~"]
MOUNT_PATHS = [
    "/data",
    "/models",
    "/usr/local/gvirtus/etc/properties.json",
    "/usr/local/gvirtus/etc",
    "/opt/gvirtus/etc/properties.json",
    "/usr/local/gvirtus",
]

# DNS-1123 labels from a small alphabet: container and volume names collide often.
dns_labels = st.from_regex(r"[abc]([abc-]{0,2}[abc])?", fullmatch=True)
# Label and annotation keys, with the "/" that JSON Pointers must escape.
qualified_keys = st.sampled_from(["app", "tier", "a.b/c", "example.com/x_y", "gvirtus.io/other"])
label_values = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,6}[A-Za-z0-9])?)?", fullmatch=True)
# Environment variable names as Kubernetes 1.30 accepts them.
env_names = st.sampled_from(["A", "B", "PATH", "x.y", "_u", "-dash", OWN_ENV])
# Arguments with what shells and JSON treat specially.
shell_words = st.sampled_from(
    [
        "python",
        "train.py",
        "--epochs=1",
        "",
        " ",
        "'",
        '"',
        "$HOME",
        "$(id)",
        "a b",
        "\n",
        "\\",
        "é",
    ]
) | st.text(max_size=6)
quantities = st.sampled_from(["1", "2", "0", "4"])


def coin(draw: st.DrawFn) -> bool:
    """A fair coin (also: whether an empty list or map is written out or left absent)."""
    result: bool = draw(st.booleans())
    return result


def one_in(draw: st.DrawFn, chances: int) -> bool:
    result: bool = draw(st.integers(1, chances)) == 1
    return result


@st.composite
def env_lists(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(env_names, unique=True, max_size=3))
    entries: list[dict[str, Any]] = []
    for name in names:
        if coin(draw):
            entries.append({"name": name, "value": draw(shell_words)})
        else:
            entries.append(
                {"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
            )
    return entries


@st.composite
def resource_requirements(draw: st.DrawFn) -> dict[str, Any]:
    """GPU in limits, or in both with the same quantity (extended resources cannot overcommit)."""
    resources: dict[str, Any] = {}
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    gpu = draw(st.sampled_from([None, "limits", "both"]))
    if gpu is not None:
        quantity = draw(quantities)
        limits[GPU] = quantity
        if gpu == "both":
            requests[GPU] = quantity
    if coin(draw):
        limits["memory"] = "1Gi"
        requests["cpu"] = "100m"
    if limits or coin(draw):
        resources["limits"] = limits
    if requests:
        resources["requests"] = requests
    return resources


@st.composite
def containers(draw: st.DrawFn, names: list[str], volumes: list[str]) -> list[dict[str, Any]]:
    items = []
    for name in names:
        item: dict[str, Any] = {"name": name, "image": "registry.example.com/app:1"}
        if not one_in(draw, 3):
            item["command"] = draw(st.lists(shell_words, min_size=1, max_size=3))
        if coin(draw):
            item["args"] = draw(st.lists(shell_words, max_size=3))
        resources = draw(resource_requirements())
        if resources or coin(draw):
            item["resources"] = resources
        env = draw(env_lists())
        if env or coin(draw):
            item["env"] = env
        if volumes and coin(draw):
            paths = draw(st.lists(st.sampled_from(MOUNT_PATHS), unique=True, max_size=3))
            mounts = []
            for path in paths:
                mount: dict[str, Any] = {"name": draw(st.sampled_from(volumes)), "mountPath": path}
                if coin(draw):
                    mount["subPath"] = draw(st.sampled_from(["a", "a/b", "properties.json"]))
                if coin(draw):
                    mount["readOnly"] = coin(draw)
                mounts.append(mount)
            item["volumeMounts"] = mounts
        if coin(draw):
            item["securityContext"] = {"readOnlyRootFilesystem": coin(draw)}
        items.append(item)
    return items


def volume(name: str, kind: str) -> dict[str, Any]:
    if kind == "configMap":
        return {"name": name, "configMap": {"name": "settings"}}
    if kind == "downwardAPI":
        items = [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
        return {"name": name, "downwardAPI": {"items": items}}
    return {"name": name, "emptyDir": {}}


@st.composite
def pod_annotations(
    draw: st.DrawFn, container_names: list[str], backends: Sequence[str]
) -> dict[str, str]:
    result = draw(st.dictionaries(qualified_keys, st.text(max_size=5), max_size=3))
    strategy = draw(st.sampled_from(["sed", None, "mount", "bogus"]))
    if strategy == "bogus":
        result[STRATEGY] = draw(st.text(max_size=6))
    elif strategy is not None:
        result[STRATEGY] = strategy
    if one_in(draw, 3):
        result[HOME] = draw(st.sampled_from(HOMES * 3 + BAD_HOMES))
    if one_in(draw, 3):
        names = st.sampled_from(container_names)
        chosen = draw(st.lists(names, min_size=1, max_size=3) | st.lists(names | st.just("ghost")))
        separator = draw(st.sampled_from([",", ", ", " ,"]))
        result[CONTAINERS] = separator.join(chosen)
    if one_in(draw, 10):
        result[OWN_PROPERTIES] = "{}"
    if backends and one_in(draw, 3):
        result[OWN_BACKEND] = draw(st.sampled_from([*backends, "1.2.3.4:1", "junk"]))
    return result


@st.composite
def valid_pods(draw: st.DrawFn, backends: Sequence[str] = ()) -> dict[str, Any]:
    """``backends``: ``ip:port`` values a copied or earlier ``gvirtus.io/backend`` may name."""
    names = draw(st.lists(dns_labels, min_size=1, max_size=5, unique=True))
    split = draw(st.integers(1, len(names)))
    volume_names = draw(st.lists(st.sampled_from(["data", "cfg", OWN_VOLUME]), unique=True))
    kinds = ["emptyDir", "configMap", "downwardAPI"]
    volumes = [volume(name, draw(st.sampled_from(kinds))) for name in volume_names]
    spec: dict[str, Any] = {"containers": draw(containers(names[:split], volume_names))}
    if split < len(names):
        spec["initContainers"] = draw(containers(names[split:], volume_names))
    if volumes or coin(draw):
        spec["volumes"] = volumes
    selector = draw(st.dictionaries(qualified_keys, label_values, max_size=2))
    if one_in(draw, 5):
        selector[FRONTEND_LABEL] = draw(st.sampled_from(["true", "false"]))
    if selector or coin(draw):
        spec["nodeSelector"] = selector
    if one_in(draw, 5):
        gates = draw(st.lists(st.sampled_from(["example.com/wait", OWN_GATE]), unique=True))
        spec["schedulingGates"] = [{"name": gate} for gate in gates]
    labels = draw(st.dictionaries(qualified_keys, label_values, max_size=2))
    labels[ENABLE_LABEL] = draw(st.sampled_from(["true"] * 8 + ["false", "True"]))
    metadata: dict[str, Any] = {"labels": labels}
    if coin(draw):
        metadata["name"] = "p"
    else:
        metadata["generateName"] = "job-"
    annotations = draw(pod_annotations(names, backends))
    if annotations or coin(draw):
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def review(pod: Any, api_version: str = ADMISSION_VERSIONS[0], **request: Any) -> dict[str, Any]:
    """An AdmissionReview for a pod CREATE as the API server sends it (a fresh uid)."""
    body: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "ml",
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:ml:default"},
        "object": pod,
        "dryRun": False,
    }
    body.update(request)
    return {"apiVersion": api_version, "kind": "AdmissionReview", "request": body}


def node_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON document (the root excluded)."""
    if isinstance(value, dict):
        items: Iterator[tuple[Any, Any]] = iter(value.items())
    elif isinstance(value, list):
        items = iter(enumerate(value))
    else:
        return
    for key, child in items:
        yield (*prefix, key)
        yield from node_paths(child, (*prefix, key))


def json_type(value: Any) -> str:
    for kind, python in (("object", dict), ("array", list), ("string", str), ("boolean", bool)):
        if isinstance(value, python):
            return kind
    return "null" if value is None else "number"


OTHER_TYPED: list[Any] = [None, True, 0, 7.5, "", "app", [], ["app"], {}, {"name": 1}]


@st.composite
def wrong_typed(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """A valid pod with one value replaced by one of another JSON type, and where it was."""
    pod = draw(valid_pods())
    path = draw(st.sampled_from(list(node_paths(pod))))
    parent: Any = pod
    for token in path[:-1]:
        parent = parent[token]
    current = json_type(parent[path[-1]])
    parent[path[-1]] = copy.deepcopy(
        draw(st.sampled_from([v for v in OTHER_TYPED if json_type(v) != current]))
    )
    return pod, path


HUGE = 100_000
QUOTED_FIELDS = {"annotations", "nodeSelector", "labels", "name", "command", "schedulingGates"}


@st.composite
def huge_text(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """A valid pod with a 100,000-character string in one place: a string value replaced, or a
    key added to an object; and where."""
    pod = draw(valid_pods())
    huge = draw(st.sampled_from(["x", "a,", "/", "é", " "])) * HUGE
    paths = list(node_paths(pod))
    # Mostly where the mutation reads and may quote a value back: names, annotations, selectors.
    quoted = [p for p in paths if QUOTED_FIELDS & set(p)]
    path = draw(st.sampled_from(quoted * 4 + paths))
    parent: Any = pod
    for token in path[:-1]:
        parent = parent[token]
    target = parent[path[-1]]
    if isinstance(target, dict):
        target[huge] = draw(st.sampled_from(["", "v", "true"]))
        return pod, (*path, "<key>")
    if isinstance(target, str):
        parent[path[-1]] = huge
    return pod, path
