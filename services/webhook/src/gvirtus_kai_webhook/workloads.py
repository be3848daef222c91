"""Where the pod (template) sits in each Kubernetes object the injector understands."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# (API group, kind) -> path of the pod-shaped object (metadata + spec) inside the manifest.
# Keyed on the group too, so a custom resource that happens to be called "Job" is left alone.
POD_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "Pod"): (),
    ("", "PodTemplate"): ("template",),
    ("", "ReplicationController"): ("spec", "template"),
    ("apps", "Deployment"): ("spec", "template"),
    ("apps", "StatefulSet"): ("spec", "template"),
    ("apps", "DaemonSet"): ("spec", "template"),
    ("apps", "ReplicaSet"): ("spec", "template"),
    ("batch", "Job"): ("spec", "template"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
}


@dataclass(frozen=True)
class PodSite:
    """One pod or pod template inside a manifest."""

    path: tuple[str | int, ...]  # from the document root, e.g. ("items", 0, "spec", "template")
    pod: dict[str, Any]  # the object itself: mutating it changes the document
    kind: str
    name: str  # "namespace/name" or "name" of the object that holds it

    @property
    def location(self) -> str:
        where = ".".join(str(t) for t in self.path)
        return f"{self.kind} {self.name}" + (f" at {where}" if where else "")


def pod_sites(document: object) -> Iterator[PodSite]:
    """Every pod or pod template in ``document``, including inside ``kind: List`` items."""
    yield from _sites(document, ())


def _sites(document: object, prefix: tuple[str | int, ...]) -> Iterator[PodSite]:
    if not isinstance(document, dict):
        return
    kind = str(document.get("kind", ""))
    group = str(document.get("apiVersion", "")).rpartition("/")[0]
    items = document.get("items")
    if kind.endswith("List") and isinstance(items, list):
        for index, item in enumerate(items):
            yield from _sites(item, (*prefix, "items", index))
        return
    path = POD_PATHS.get((group, kind))
    if path is None:
        return
    node: object = document
    for token in path:
        node = node.get(token) if isinstance(node, dict) else None
    if isinstance(node, dict):
        yield PodSite((*prefix, *path), node, kind, object_name(document))


def object_name(document: Mapping[str, Any]) -> str:
    metadata = document.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name = str(metadata.get("name") or metadata.get("generateName") or "<unnamed>")
    namespace = metadata.get("namespace")
    return f"{namespace}/{name}" if namespace else name
