"""The pods of ``examples/`` made runnable here: every application container becomes the stand-in
GVirtuS frontend (it reads the injected config as GVirtuS does and connects from N threads), a
sidecar that is not a GVirtuS target just sleeps; everything else stays as the example has it."""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lightkube.resources.core_v1 import Pod

from tests.node.kube import STANDIN_FRONTEND, Kube, is_ready, load_example, wait_until

GPU = "nvidia.com/gpu"
STANDIN_COMMAND = ["/usr/local/bin/gvirtus-standin-frontend"]
STANDIN_HOME = "/usr/local/gvirtus"  # GVIRTUS_HOME of the stand-in image (its own properties.json)
BACKEND_ANNOTATION = "gvirtus.io/backend"


def pod_specs(document: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    if document["kind"] == "Pod":
        yield document["spec"]
    elif "template" in document.get("spec", {}):
        yield document["spec"]["template"]["spec"]


def targets(spec: Mapping[str, Any]) -> list[str]:
    """The containers the webhook gives a frontend config: those requesting the GPU, else the
    first one."""
    gpu = [
        c["name"]
        for c in spec["containers"]
        if GPU in (c.get("resources", {}).get("limits") or {})
        or GPU in (c.get("resources", {}).get("requests") or {})
    ]
    return gpu or [spec["containers"][0]["name"]]


def with_standin(
    document: Mapping[str, Any], threads: int, namespace: str | None = None
) -> dict[str, Any]:
    """``document`` with its containers replaced as the module docstring says; a unique name."""
    out = copy.deepcopy(dict(document))
    out["metadata"]["name"] = f"{out['metadata']['name']}-{secrets.token_hex(2)}"
    if namespace:
        out["metadata"]["namespace"] = namespace
    annotations = out["metadata"].get("annotations", {})
    if annotations.get("gvirtus.io/strategy") == "sed":
        annotations["gvirtus.io/home"] = STANDIN_HOME  # the file sed edits is the image's
    for spec in pod_specs(out):
        names = targets(spec)
        for container in spec["containers"]:
            container["image"] = STANDIN_FRONTEND
            container["imagePullPolicy"] = "Never"
            container.pop("args", None)
            limits = container.get("resources", {}).get("limits", {})
            limits.pop("memory", None)  # the examples size a real trainer
            if container["name"] in names:
                container["command"] = list(STANDIN_COMMAND)
                container.setdefault("env", []).append(
                    {"name": "STANDIN_THREADS", "value": str(threads)}
                )
            else:
                container["command"] = ["sleep", "infinity"]
    return out


@dataclass(frozen=True)
class RunningPod:
    namespace: str
    name: str
    ip: str
    backend: str  # ip:port the controller (or the DNS placement) pinned it to
    targets: tuple[str, ...]
    node: str


def example_pods(kube: Kube, document: Mapping[str, Any]) -> list[RunningPod]:
    """The running pods of an applied (transformed) example document."""
    namespace = document["metadata"]["namespace"]
    names = tuple(next(iter(targets(s) for s in pod_specs(document))))
    if document["kind"] == "Pod":
        pods = [kube.wait_running(namespace, document["metadata"]["name"])]
    else:
        selector = document["spec"]["selector"]["matchLabels"]
        replicas = document["spec"].get("replicas", 1)

        def all_ready() -> list[Pod] | None:
            found = [
                p
                for p in kube.client.list(Pod, namespace=namespace, labels=dict(selector))
                if is_ready(p) and p.metadata and not p.metadata.deletionTimestamp
            ]
            return found if len(found) == replicas else None

        pods = wait_until(all_ready, f"{replicas} ready pods of {document['metadata']['name']}")
    running = []
    for pod in pods:
        assert pod.metadata is not None
        assert pod.status is not None
        assert pod.spec is not None
        running.append(
            RunningPod(
                namespace=namespace,
                name=pod.metadata.name or "",
                ip=pod.status.podIP or "",
                backend=(pod.metadata.annotations or {}).get(BACKEND_ANNOTATION, ""),
                targets=names,
                node=pod.spec.nodeName or "",
            )
        )
    return running


def load_standin_examples(name: str, threads: int) -> list[dict[str, Any]]:
    return [with_standin(d, threads) for d in load_example(name)]


def gvirtus_pod(name: str, namespace: str = "default") -> dict[str, Any]:
    """A minimal GVirtuS pod: the stand-in frontend with one virtual GPU."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"gvirtus.io/enabled": "true"},
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "app",
                    "image": STANDIN_FRONTEND,
                    "imagePullPolicy": "Never",
                    "command": list(STANDIN_COMMAND),
                    "resources": {"limits": {GPU: 1}},
                }
            ],
        },
    }


def all_connected(kube: Kube, pod: RunningPod, backend_ip: str, count: int) -> Callable[[], bool]:
    """Whether the stand-in backend at ``backend_ip`` holds ``count`` open connections from the
    pod's own address."""

    def connected() -> bool:
        return (
            len(
                [
                    c
                    for c in kube.backend_connections(backend_ip)
                    if c["peer"][0] == pod.ip and c["open"]
                ]
            )
            >= count
        )

    return connected
