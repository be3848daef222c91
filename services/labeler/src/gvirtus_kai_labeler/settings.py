"""Labeler settings, read from ``GVIRTUS_KAI_*`` environment variables."""

from __future__ import annotations

from typing import Annotated

from gvirtus_kai_common.labels import label_key_problem, label_value_problem
from gvirtus_kai_common.settings import ENV_PREFIX, LogLevel
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # The node this pod runs on (downward API ``spec.nodeName``); unused with --all-nodes.
    node_name: str = ""
    labels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: parse_labels(DEFAULT_LABELS)
    )
    health_host: str = "0.0.0.0"
    health_port: int = Field(8080, ge=0, le=65535)  # 0 picks a free port (tests, local runs)
    log_level: LogLevel = "info"

    @field_validator("labels", mode="before")
    @classmethod
    def _parse_labels(cls, value: object) -> object:
        return parse_labels(value) if isinstance(value, str) else value
