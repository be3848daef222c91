"""Pod fixtures and checks shared by the mutation and CLI tests."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonpatch
from gvirtus_kai_webhook.mutation import Mutation
from kubernetes_validate.utils import latest_version

from .podrules import pod_problems

REVIEWS = Path(__file__).parent / "fixtures" / "reviews"
POD_REVIEWS = sorted(p.name for p in REVIEWS.glob("pod-*.json"))
BACKEND_IP = "10.96.0.42"
# The newest Kubernetes schema kubernetes-validate ships.
KUBERNETES_VERSION = latest_version()


@cache
def _review_text(name: str) -> str:
    return (REVIEWS / name).read_text()


def review(name: str) -> dict[str, Any]:
    """A fresh copy of an AdmissionReview fixture (tests may edit it)."""
    loaded: dict[str, Any] = json.loads(_review_text(name))
    return loaded


def pod(name: str = "pod-gpu-v1.json") -> dict[str, Any]:
    obj: dict[str, Any] = review(name)["request"]["object"]
    return obj


def patch_document(mutation: Mutation) -> list[dict[str, Any]]:
    return [op.model_dump() for op in mutation.patch]


def apply(obj: dict[str, Any], mutation: Mutation) -> dict[str, Any]:
    """The object after the mutation's JSON Patch, applied by an independent RFC 6902 library."""
    patched: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(obj), patch_document(mutation))
    return patched


def assert_valid_pod(obj: dict[str, Any]) -> None:
    """A pod the API server of the chart's oldest Kubernetes accepts (see ``podrules``)."""
    problems = pod_problems(obj)
    assert problems == [], problems


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    spec = obj["spec"]
    for item in (spec.get("initContainers") or []) + spec["containers"]:
        if item["name"] == name:
            found: dict[str, Any] = item
            return found
    raise KeyError(name)


def env_of(item: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in item.get("env") or []}
