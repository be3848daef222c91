"""Keeping plain GPU pods off virtual GPUs: the pure logic behind the guard route.

The device plugin advertises virtual GPU slots on exactly the nodes its DaemonSet selects: nodes
that meet every one of a few label requirements (by default ``gvirtus.io/frontend.allowed=true``
and ``nvidia.com/gpu.present!=true``). A pod that requests the GPU resource but is no GVirtuS pod
would be given such a slot and no GVirtuS config: a CUDA program with no GPU at all. The guard
gives such a pod a required node affinity that no virtual-GPU node meets, the negation of that
selection: a node qualifies when it fails at least one of the requirements.

Required node-affinity terms are ORed, the expressions inside one term ANDed. So every term ``T``
of the pod's own becomes one term per negated requirement (``T and not r``), and a pod without
terms gets one term per negated requirement. A term that already holds one of the negated
requirements admits no virtual-GPU node and is kept as it is, and so is an empty term, which admits
no node at all: the guard's own output yields an empty patch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gvirtus_kai_common.labels import label_key_problem, label_value_problem
from pydantic import BaseModel, ConfigDict, ValidationError

from gvirtus_kai_webhook.models import (
    AddOperation,
    JsonPatchOperation,
    ReplaceOperation,
    json_pointer,
)

REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
_AFFINITY_PATH = ("spec", "affinity", "nodeAffinity", REQUIRED, "nodeSelectorTerms")


@dataclass(frozen=True)
class NodeRequirement:
    """One label requirement every virtual-GPU node meets: ``key=value`` or ``key!=value``
    (the latter also met by nodes without the label, as a node affinity's ``NotIn``)."""

    key: str
    value: str
    equals: bool

    def __str__(self) -> str:
        return f"{self.key}{'=' if self.equals else '!='}{self.value}"

    def negation(self) -> dict[str, Any]:
        """The node selector requirement met by exactly the nodes that fail this one."""
        operator = "NotIn" if self.equals else "In"
        return {"key": self.key, "operator": operator, "values": [self.value]}


def parse_node_requirements(text: str) -> tuple[NodeRequirement, ...]:
    """``key=value,key!=value,...`` (label-selector syntax); ValueError naming a bad entry."""
    requirements = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        key, sep, value = entry.partition("!=")
        if not sep:
            key, sep, value = entry.partition("=")
        if not sep:
            raise ValueError(f"{entry!r} is neither key=value nor key!=value")
        key, value = key.strip(), value.strip()
        problem = label_key_problem(key) or label_value_problem(value)
        if problem:
            raise ValueError(f"{entry!r}: {problem}")
        requirements.append(NodeRequirement(key=key, value=value, equals=sep == "="))
    if not requirements:
        # No requirement would mean every node is a virtual-GPU node: nothing could be allowed.
        raise ValueError("at least one node label requirement is needed")
    return tuple(requirements)


class GuardSkipped(Exception):
    """The pod's fields the guard reads have the wrong type; ``str(exc)`` says which."""


# --- the pod fields the guard reads, with the types it relies on ------------------------------


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Resources(_Shape):
    limits: dict[str, str | int | float] | None = None
    requests: dict[str, str | int | float] | None = None


class _Container(_Shape):
    resources: _Resources | None = None


class _Term(_Shape):
    matchExpressions: list[dict[str, Any]] | None = None


class _NodeSelector(_Shape):
    nodeSelectorTerms: list[_Term] | None = None


class _NodeAffinity(_Shape):
    requiredDuringSchedulingIgnoredDuringExecution: _NodeSelector | None = None


class _Affinity(_Shape):
    nodeAffinity: _NodeAffinity | None = None


class _Spec(_Shape):
    containers: list[_Container] | None = None
    initContainers: list[_Container] | None = None
    affinity: _Affinity | None = None


class _Metadata(_Shape):
    labels: dict[str, str] | None = None


class _Pod(_Shape):
    metadata: _Metadata | None = None
    spec: _Spec | None = None


def requests_resource(pod: Mapping[str, Any], resource: str) -> bool:
    """Whether a container or init container asks for a non-zero amount of ``resource``."""
    spec = _mapping(pod.get("spec"))
    for list_name in ("containers", "initContainers"):
        for container in _sequence(spec.get(list_name)):
            resources = _mapping(_mapping(container).get("resources"))
            for kind in ("limits", "requests"):
                quantity = _mapping(resources.get(kind)).get(resource)
                if quantity is not None and str(quantity).strip() not in ("", "0"):
                    return True
    return False


def guard_pod(
    pod: Mapping[str, Any],
    *,
    enable_label: str,
    gpu_resource: str,
    virtual_nodes: Sequence[NodeRequirement],
) -> list[JsonPatchOperation]:
    """The patch that keeps ``pod`` off every virtual-GPU node; empty for GVirtuS pods (label
    ``enable_label: "true"``), pods that request no ``gpu_resource``, and pods already kept off.
    Raises ``GuardSkipped`` for a pod whose fields have the wrong type."""
    try:
        _Pod.model_validate(pod)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        raise GuardSkipped(f"{where}: {error['msg']}") from None
    labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
    if labels.get(enable_label) == "true" or not requests_resource(pod, gpu_resource):
        return []
    negations = [requirement.negation() for requirement in virtual_nodes]

    # Walk down to the terms; the first absent level is added whole.
    node: Mapping[str, Any] = pod
    for depth, token in enumerate(_AFFINITY_PATH[:-1]):
        child = node.get(token)
        if not isinstance(child, dict):
            value: Any = _terms_for([], negations)
            for inner in reversed(_AFFINITY_PATH[depth + 1 :]):
                value = {inner: value}
            return [AddOperation(path=json_pointer(*_AFFINITY_PATH[: depth + 1]), value=value)]
        node = child
    terms = _sequence(node.get(_AFFINITY_PATH[-1]))
    wanted = _terms_for(terms, negations)
    if wanted == list(terms):
        return []
    path = json_pointer(*_AFFINITY_PATH)
    if _AFFINITY_PATH[-1] in node:
        return [ReplaceOperation(path=path, value=wanted)]
    return [AddOperation(path=path, value=wanted)]


def _terms_for(terms: Sequence[Any], negations: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod's terms, each kept or split so that none admits a virtual-GPU node."""
    if not terms:
        return [{"matchExpressions": [negation]} for negation in negations]
    result: list[dict[str, Any]] = []
    for item in terms:
        term = dict(_mapping(item))
        expressions = list(_sequence(term.get("matchExpressions")))
        fields = _sequence(term.get("matchFields"))
        # An empty term admits no node (the API's rule): an expression added would admit some.
        empty = not expressions and not fields
        if empty or any(_same_requirement(e, n) for e in expressions for n in negations):
            result.append(term)
            continue
        for negation in negations:
            result.append({**term, "matchExpressions": [*expressions, negation]})
    return result


def _same_requirement(expression: object, negation: Mapping[str, Any]) -> bool:
    item = _mapping(expression)
    return bool(
        item.get("key") == negation["key"]
        and item.get("operator") == negation["operator"]
        and list(_sequence(item.get("values"))) == negation["values"]
    )


_EMPTY: Mapping[str, Any] = {}


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else _EMPTY


def _sequence(value: object) -> Sequence[Any]:
    return value if isinstance(value, list) else ()
