"""The labeler's decisions, as pure functions: what to add, and how to ask for it safely."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def missing_labels(
    node_labels: Mapping[str, str] | None, wanted: Mapping[str, str]
) -> dict[str, str]:
    """The wanted labels whose key the node lacks. A key that is present keeps its value, whatever
    it is (even empty): that is the operator's choice."""
    present = node_labels or {}
    return {key: value for key, value in wanted.items() if key not in present}


def label_patch(missing: Mapping[str, str], resource_version: str) -> dict[str, Any]:
    """A JSON merge patch adding ``missing``; ``metadata.resourceVersion`` makes it conditional:
    the API server answers 409 Conflict if the node changed since we read it at that version."""
    return {"metadata": {"resourceVersion": resource_version, "labels": dict(missing)}}
