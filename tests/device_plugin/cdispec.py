"""What a container runtime checks in a CDI spec, and how it resolves CDI device names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

# The parts of the CDI specification this plugin uses, with the rules of the container-device-
# interface library containerd 1.7 bundles: spec versions it knows, kind and device name syntax,
# unknown fields rejected. Only environment edits are allowed here: no device nodes, by design.
CDI_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["cdiVersion", "kind", "devices"],
    "additionalProperties": False,
    "properties": {
        "cdiVersion": {"enum": ["0.3.0", "0.4.0", "0.5.0"]},
        "kind": {
            "type": "string",
            "pattern": r"^[A-Za-z][-A-Za-z0-9_.]*[A-Za-z0-9]/[A-Za-z][-A-Za-z0-9_]*[A-Za-z0-9]$",
        },
        "devices": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "containerEdits"],
                "additionalProperties": False,
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": r"^[A-Za-z0-9]([-A-Za-z0-9_.:]*[A-Za-z0-9])?$",
                    },
                    "containerEdits": {
                        "type": "object",
                        "required": ["env"],
                        "additionalProperties": False,
                        "properties": {
                            "env": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*="},
                            }
                        },
                    },
                },
            },
        },
    },
}


class UnresolvableCDIDevice(LookupError):
    """What a runtime reports as ``unresolvable CDI devices``."""


def load_valid_spec(path: Path) -> dict[str, Any]:
    """The spec in ``path`` if a runtime would accept it; raises otherwise (missing, invalid)."""
    spec: dict[str, Any] = json.loads(path.read_text())
    jsonschema.validate(spec, CDI_SCHEMA)
    return spec


def resolve(spec_file: Path, names: list[str]) -> dict[str, list[str]]:
    """Resolve qualified CDI names (``<kind>=<device>``) against the spec file as a runtime does
    when it creates a container: device name -> the environment it adds."""
    try:
        spec = load_valid_spec(spec_file)
    except FileNotFoundError as error:
        raise UnresolvableCDIDevice(f"no spec file: {names}") from error
    env_by_device = {device["name"]: device["containerEdits"]["env"] for device in spec["devices"]}
    resolved = {}
    for qualified in names:
        kind, _, name = qualified.partition("=")
        if kind != spec["kind"] or name not in env_by_device:
            raise UnresolvableCDIDevice(qualified)
        resolved[name] = env_by_device[name]
    return resolved
