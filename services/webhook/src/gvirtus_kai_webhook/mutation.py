"""The pod mutation: pure functions shared by the webhook and the ``gvirtus-kai inject`` CLI.

CONTRACT (owned by the mutation work; the server codes against it):
- ``is_enabled(pod)``: the pod carries ``gvirtus.io/enabled: "true"``.
- ``frontend_config(settings, backend_address)``: the GVirtuS properties.json document (dict).
- ``mutate_pod(pod, settings, backend_address)``: the JSON Patch and warnings for one pod dict,
  raising ``MutationDenied`` with a user-facing message when the pod cannot be mutated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .models import JsonPatchOperation
from .settings import Settings

ENABLE_LABEL = "gvirtus.io/enabled"


class MutationDenied(Exception):
    """The pod cannot be mutated; ``str(exc)`` is the message returned to the user."""


@dataclass(frozen=True)
class Mutation:
    patch: list[JsonPatchOperation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def is_enabled(pod: Mapping[str, Any]) -> bool:
    raise NotImplementedError


def frontend_config(settings: Settings, backend_address: str) -> dict[str, Any]:
    raise NotImplementedError


def mutate_pod(pod: Mapping[str, Any], settings: Settings, backend_address: str) -> Mutation:
    raise NotImplementedError
