"""Strict Kubernetes OpenAPI validation with the schemas kubernetes-validate ships, cached.

``kubernetes_validate.validate`` re-reads the 1.4 MB definitions file and rebuilds the validator
on every call; here one validator per (Kubernetes minor, apiVersion, kind) is built once.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

import jsonschema
import kubernetes_validate
import orjson
from referencing import Registry, Resource

_SCHEMAS = resources.files(kubernetes_validate) / "kubernetes-json-schema"
_STRICT_DIR = re.compile(r"^v1\.(?P<minor>\d+)\.0-local-strict$")
# Scheduling gates (GA) and the preStop sleep action: the chart's kubeVersion starts here.
OLDEST_MINOR = 30


def supported_minors() -> list[str]:
    """``1.30`` up to the newest minor the installed kubernetes-validate knows."""
    minors = sorted(
        int(m["minor"]) for entry in _SCHEMAS.iterdir() if (m := _STRICT_DIR.match(entry.name))
    )
    return [f"1.{minor}" for minor in minors if minor >= OLDEST_MINOR]


class NoSchemaError(LookupError):
    """kubernetes-validate has no schema for the kind (custom resources such as cert-manager's)."""


@functools.cache
def _definitions(minor: str) -> Resource[Any]:
    raw = (_SCHEMAS / f"v{minor}.0-local-strict" / "_definitions.json").read_bytes()
    return Resource.from_contents(orjson.loads(raw))


@functools.cache
def validator(minor: str, api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    # rbac.authorization.k8s.io/v1 -> rbac-v1, v1 -> v1 (the package's file naming)
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = _SCHEMAS / f"v{minor}.0-local-strict" / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        raise NoSchemaError(f"no Kubernetes {minor} schema for {api_version} {kind}")
    schema = orjson.loads(path.read_bytes())
    registry: Registry[Any] = Resource.from_contents(schema) @ Registry()
    registry = _definitions(minor) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def errors(manifest: dict[str, Any], minor: str) -> list[str]:
    """Readable strict-validation errors of one object against one Kubernetes minor."""
    check = validator(minor, manifest["apiVersion"], manifest["kind"])
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in check.iter_errors(manifest)
    ]
