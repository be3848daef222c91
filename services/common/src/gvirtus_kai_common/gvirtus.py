"""The GVirtuS frontend configuration and the pod annotations that carry it.

The webhook (DNS path) and the controller (gate path) both write ``gvirtus.io/properties``; they
build it here so the two paths produce byte-identical JSON for the same backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# The scheduling gate the webhook sets and the controller removes once a backend is chosen.
BACKEND_GATE = "gvirtus.io/backend"
# ``<ipv4>:<port>`` of the backend pod a GVirtuS pod is pinned to.
BACKEND_ANNOTATION = "gvirtus.io/backend"
# The properties.json text, projected into the containers by a downwardAPI volume.
PROPERTIES_ANNOTATION = "gvirtus.io/properties"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "cudart",
    "cublas",
    "curand",
    "cudnn",
    "cufft",
    "cusolver",
    "cusparse",
)


def split_plugins(text: str) -> tuple[str, ...]:
    """``cudart, cublas`` into ``("cudart", "cublas")``; ValueError when nothing is left."""
    plugins = tuple(name.strip() for name in text.split(",") if name.strip())
    if not plugins:
        raise ValueError("at least one GVirtuS plugin is needed")
    return plugins


def frontend_config(server_address: str, port: int | str, plugins: Sequence[str]) -> dict[str, Any]:
    """GVirtuS ``properties.json``: one TCP communicator to the backend; the port is a string."""
    return {
        "communicator": [
            {
                "endpoint": {
                    "suite": "tcp/ip",
                    "protocol": "tcp",
                    "server_address": server_address,
                    "port": str(port),
                },
                "plugins": list(plugins),
            }
        ],
        "secure_application": False,
    }


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one encoder, not one per call


def properties_json(server_address: str, port: int | str, plugins: Sequence[str]) -> str:
    """``frontend_config`` as the compact JSON text the pod annotation holds."""
    return _COMPACT.encode(frontend_config(server_address, port, plugins))
