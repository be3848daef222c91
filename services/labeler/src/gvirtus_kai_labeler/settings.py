"""Labeler settings, read from ``GVIRTUS_KAI_*`` environment variables."""

from __future__ import annotations

from typing import Annotated

from gvirtus_kai_common.labels import label_key_problem, label_value_problem
from gvirtus_kai_common.settings import HealthServerSettings
from pydantic import Field, field_validator
from pydantic_settings import NoDecode

DEFAULT_LABELS = "gvirtus.io/frontend.allowed=true,gvirtus.io/backend.allowed=false"


def parse_labels(text: str) -> dict[str, str]:
    """``key=value,key=value`` into a dict; ValueError naming the first bad entry.

    Empty entries (a trailing comma) are skipped; a value may be empty (``key=``), as in Kubernetes.
    """
    labels: dict[str, str] = {}
    for raw_entry in text.split(","):
        entry = raw_entry.strip()
        if not entry:
            continue
        key, equals, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not equals:
            raise ValueError(f"label entry {entry!r}: expected key=value")
        if problem := label_key_problem(key):
            raise ValueError(f"label entry {entry!r}: invalid key: {problem}")
        if problem := label_value_problem(value):
            raise ValueError(f"label entry {entry!r}: invalid value: {problem}")
        if key in labels:
            raise ValueError(f"label entry {entry!r}: duplicate key {key!r}")
        labels[key] = value
    if not labels:
        raise ValueError("no labels configured: nothing to label")
    return labels


class Settings(HealthServerSettings):
    node_name: str = Field(
        "", description="the node to label (downward API spec.nodeName); unused with --all-nodes"
    )
    labels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: parse_labels(DEFAULT_LABELS),
        description="labels added where their key is missing: key=value,key=value",
    )

    @field_validator("labels", mode="before")
    @classmethod
    def _parse_labels(cls, value: object) -> object:
        return parse_labels(value) if isinstance(value, str) else value
