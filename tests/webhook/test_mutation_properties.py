"""Properties of the mutation over generated pods: it applies, validates and is idempotent."""

from __future__ import annotations

import copy
import json
from typing import Any

from gvirtus_kai_common.gvirtus import PROPERTIES_ANNOTATION, frontend_config
from gvirtus_kai_webhook.mutation import (
    CONFIG_ENV,
    PROPERTIES_VOLUME,
    MutationDenied,
    is_sed_wrapped,
    mutate_pod,
)
from gvirtus_kai_webhook.settings import Settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .pods import BACKEND_IP, apply, assert_valid_pod, env_of

GPU = "nvidia.com/gpu"
SETTINGS = {"mount": Settings(strategy="mount"), "sed": Settings(strategy="sed")}
HOMES = ["/usr/local/gvirtus", "/opt/gvirtus", "/opt/gvirtus/"]
# Mount paths users pick, including our own file and its directory.
MOUNT_PATHS = ["/data", "/models", "/usr/local/gvirtus/etc/properties.json", "/opt/gvirtus/etc"]
# Map keys with "/" and "~", which JSON Pointers must escape.
TRICKY_KEYS = st.sampled_from(
    ["a/b", "x~y", "~1", "/", "gvirtus.io/other", "example.com/a~b/c", "plain", "~0~1"]
)
# Whether an empty list/map is written out rather than left absent (both are common).
EMPTY_LIST_OR_ABSENT = st.booleans()
NAMES = st.text(alphabet="abcdefgh-", min_size=1, max_size=6).filter(
    lambda n: n[0] != "-" and n[-1] != "-"
)


@st.composite
def containers(draw: st.DrawFn, names: list[str], volumes: list[str]) -> list[dict[str, Any]]:
    items = []
    for name in names:
        item: dict[str, Any] = {"name": name, "image": "registry.example.com/app:1"}
        if draw(st.booleans()):
            item["command"] = draw(st.lists(st.text(max_size=8), min_size=1, max_size=3))
        if draw(st.booleans()):
            item["args"] = draw(st.lists(st.text(max_size=8), max_size=3))
        gpu = draw(st.sampled_from([None, "limits", "requests", "both"]))
        if gpu is not None:
            kinds = ["limits", "requests"] if gpu == "both" else [gpu]
            item["resources"] = {kind: {GPU: "1"} for kind in kinds}
        env_names = draw(st.lists(st.sampled_from(["A", "B", CONFIG_ENV]), unique=True))
        if draw(EMPTY_LIST_OR_ABSENT) or env_names:
            item["env"] = [{"name": n, "value": draw(st.text(max_size=5))} for n in env_names]
        if draw(st.booleans()) and volumes:
            paths = draw(st.lists(st.sampled_from(MOUNT_PATHS), unique=True, max_size=3))
            item["volumeMounts"] = [
                {"name": draw(st.sampled_from(volumes)), "mountPath": p} for p in paths
            ]
        items.append(item)
    return items


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    split = draw(st.integers(1, len(names)))
    volumes = draw(
        st.lists(st.sampled_from(["data", "models", PROPERTIES_VOLUME]), unique=True, max_size=3)
    )
    spec: dict[str, Any] = {"containers": draw(containers(names[:split], volumes))}
    if split < len(names):
        spec["initContainers"] = draw(containers(names[split:], volumes))
    if draw(EMPTY_LIST_OR_ABSENT) or volumes:
        spec["volumes"] = [{"name": v, "emptyDir": {}} for v in volumes]
    selector = draw(st.none() | st.dictionaries(TRICKY_KEYS, st.just("v"), max_size=3))
    if draw(EMPTY_LIST_OR_ABSENT) or selector is not None:
        spec["nodeSelector"] = selector
    metadata: dict[str, Any] = {"name": "p", "labels": {"gvirtus.io/enabled": "true"}}
    annotations = draw(st.dictionaries(TRICKY_KEYS, st.text(max_size=5), max_size=3))
    if draw(st.booleans()):
        annotations["gvirtus.io/home"] = draw(st.sampled_from(HOMES))
    if draw(st.booleans()):
        annotations["gvirtus.io/strategy"] = draw(st.sampled_from(["mount", "sed"]))
    if draw(st.booleans()):
        chosen = draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
        annotations["gvirtus.io/containers"] = ",".join(chosen)
    if draw(EMPTY_LIST_OR_ABSENT) or annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def expected_targets(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The targeting rule, restated independently of the implementation."""
    spec = obj["spec"]
    every = (spec.get("initContainers") or []) + spec["containers"]
    named = (obj["metadata"].get("annotations") or {}).get("gvirtus.io/containers")
    if named:
        return [c for n in named.split(",") for c in every if c["name"] == n]
    users = [
        c for c in spec["containers"] if any(GPU in r for r in c.get("resources", {}).values())
    ]
    return users or spec["containers"][:1]


def effective(obj: dict[str, Any], default: str) -> tuple[str, str]:
    annotations = obj["metadata"].get("annotations") or {}
    home = annotations.get("gvirtus.io/home", "/usr/local/gvirtus").rstrip("/")
    return annotations.get("gvirtus.io/strategy", default), f"{home}/etc/properties.json"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods(), st.sampled_from(["mount", "sed"]))
def test_generated_pods_are_mutated_into_valid_idempotent_pods(
    obj: dict[str, Any], default_strategy: str
) -> None:
    config = SETTINGS[default_strategy]
    strategy, config_file = effective(obj, default_strategy)
    targets = expected_targets(obj)
    original = copy.deepcopy(obj)
    try:
        mutation = mutate_pod(obj, config, BACKEND_IP)
    except MutationDenied:
        assert strategy == "sed"
        assert any(not t.get("command") for t in targets)
        return
    assert obj == original  # the input is never modified

    after = apply(obj, mutation)
    assert_valid_pod(after)
    target_names = {t["name"] for t in targets}
    spec = after["spec"]
    for item in (spec.get("initContainers") or []) + spec["containers"]:
        if item["name"] not in target_names:
            continue
        assert env_of(item)[CONFIG_ENV] == config_file
        mounts = {m["mountPath"]: m["name"] for m in item.get("volumeMounts") or []}
        if strategy == "mount":
            assert mounts[config_file] == PROPERTIES_VOLUME
        else:
            assert is_sed_wrapped(item["command"])
            assert PROPERTIES_VOLUME not in mounts.values()
    if strategy == "mount":
        annotation = after["metadata"]["annotations"][PROPERTIES_ANNOTATION]
        assert json.loads(annotation) == frontend_config(
            BACKEND_IP, config.backend_port, config.plugins
        )
    assert after["spec"]["nodeSelector"] == {
        **(original["spec"].get("nodeSelector") or {}),
        "gvirtus.io/frontend.allowed": "true",
    }
    for key, value in (original["metadata"].get("annotations") or {}).items():
        assert after["metadata"]["annotations"].get(key, value) == value

    assert mutate_pod(after, config, BACKEND_IP).patch == []
