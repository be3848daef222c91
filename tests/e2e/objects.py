"""Pure functions over Kubernetes objects (as `kubectl -o json` prints them) for the e2e suite.

Kept apart from the fixtures so they can be checked without a cluster (tests/ci).
"""

from __future__ import annotations

import json
from typing import Any

Object = dict[str, Any]

PROPERTIES_ANNOTATION = "gvirtus.io/properties"
CONTROL_PLANE_ROLE = "node-role.kubernetes.io/control-plane"
TEST_IMAGE = "busybox:1.37.0"  # never pulled: the suite only creates pods with a server dry run


def labels(obj: Object) -> dict[str, str]:
    found: dict[str, str] = obj.get("metadata", {}).get("labels") or {}
    return found


def nodes_by_name(nodes: list[Object]) -> dict[str, Object]:
    return {str(node["metadata"]["name"]): node for node in nodes}


def pick_probe_node(nodes: list[Object], gpu_present_key: str) -> str:
    """A schedulable node without a physical GPU, preferring workers over control planes."""
    candidates = [
        node
        for node in nodes
        if labels(node).get(gpu_present_key) != "true"
        and not node.get("spec", {}).get("unschedulable", False)
    ]
    if not candidates:
        raise LookupError(
            f"no schedulable node without {gpu_present_key}=true to probe the labeler and the "
            "device plugin with"
        )
    workers = [node for node in candidates if CONTROL_PLANE_ROLE not in labels(node)]
    chosen = min(workers or candidates, key=lambda node: str(node["metadata"]["name"]))
    return str(chosen["metadata"]["name"])


def expected_frontend_labels(
    before: dict[str, dict[str, str]], key: str, default: str
) -> dict[str, str]:
    """Per node, the value the labeler must leave: the old one if any, else the default."""
    return {name: node_labels.get(key, default) for name, node_labels in before.items()}


def virtual_gpu_nodes(nodes: list[Object], frontend_key: str, gpu_present_key: str) -> list[str]:
    """Names of the nodes the device plugin serves: frontend nodes without a physical GPU."""
    return sorted(
        str(node["metadata"]["name"])
        for node in nodes
        if labels(node).get(frontend_key) == "true" and labels(node).get(gpu_present_key) != "true"
    )


def allocatable(node: Object, resource: str) -> str | None:
    value = node.get("status", {}).get("allocatable", {}).get(resource)
    return None if value is None else str(value)


def application_pod(
    namespace: str,
    *,
    enable_label: str | None,
    gpu_resource: str,
    node_selector: dict[str, str],
    name: str = "gvirtus-e2e-app",
) -> Object:
    """A one-container GPU pod; labelled for GVirtuS when `enable_label` is given."""
    metadata: Object = {"name": name, "namespace": namespace}
    if enable_label is not None:
        metadata["labels"] = {enable_label: "true"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeSelector": dict(node_selector),
            "containers": [
                {
                    "name": "app",
                    "image": TEST_IMAGE,
                    "command": ["sleep", "3600"],
                    "resources": {"limits": {gpu_resource: "1"}},
                }
            ],
        },
    }


def scheduling_gates(pod: Object) -> list[str]:
    return [gate["name"] for gate in pod["spec"].get("schedulingGates") or []]


def frontend_endpoint(pod: Object) -> dict[str, str]:
    """The TCP endpoint of the GVirtuS frontend config in the pod annotation: every thread of a
    program reads its own entry, so every entry must name it."""
    annotations = pod["metadata"].get("annotations") or {}
    if PROPERTIES_ANNOTATION not in annotations:
        raise AssertionError(
            f"pod has no {PROPERTIES_ANNOTATION} annotation; annotations: {sorted(annotations)}"
        )
    properties = json.loads(annotations[PROPERTIES_ANNOTATION])
    endpoints = [entry["endpoint"] for entry in properties["communicator"]]
    if any(other != endpoints[0] for other in endpoints):
        raise AssertionError(f"the communicator entries name different backends: {endpoints}")
    endpoint: dict[str, str] = endpoints[0]
    return endpoint


def container(pod: Object, name: str) -> Object:
    for candidate in pod["spec"]["containers"]:
        if candidate["name"] == name:
            found: Object = candidate
            return found
    raise AssertionError(f"pod has no container {name!r}")


def volume_projecting_annotation(pod: Object, annotation: str) -> str | None:
    """Name of the downwardAPI volume that projects `annotation` into a file, if any."""
    wanted = f"metadata.annotations['{annotation}']"
    for volume in pod["spec"].get("volumes") or []:
        for item in (volume.get("downwardAPI") or {}).get("items") or []:
            if (item.get("fieldRef") or {}).get("fieldPath") == wanted:
                return str(volume["name"])
    return None


def env_value(container_spec: Object, name: str) -> str | None:
    for variable in container_spec.get("env") or []:
        if variable["name"] == name:
            return None if variable.get("value") is None else str(variable["value"])
    return None
