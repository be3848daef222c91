"""The GVirtuS frontend configuration and the pod annotations that carry it.

The webhook (DNS path) and the controller (gate path) both write ``gvirtus.io/properties``; they
build it here so the two paths produce byte-identical JSON for the same backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gvirtus_kai_common.logs import clip

# The scheduling gate the webhook sets and the controller removes once a backend is chosen.
BACKEND_GATE = "gvirtus.io/backend"
# ``<ipv4>:<port>`` of the backend pod a GVirtuS pod is pinned to.
BACKEND_ANNOTATION = "gvirtus.io/backend"
# The properties.json text, projected into the containers by a downwardAPI volume.
PROPERTIES_ANNOTATION = "gvirtus.io/properties"
# Per pod: how many threads of one program may open a GVirtuS frontend (communicator entries).
THREADS_ANNOTATION = "gvirtus.io/threads"

# The GVirtuS frontend hands the k-th thread of a process that opens a frontend
# ``communicator[k]`` and aborts the process when that entry is missing: the config repeats one
# entry (one backend) this many times. 32 covers the CUDA threads of ordinary programs (a main
# thread, framework helper threads, a worker pool) in about 6 KB of annotation.
DEFAULT_THREADS = 32
# About 190 bytes an entry: 512 keep the annotation near 100 KB, well inside the API server's
# 256 KiB limit on all of a pod's annotations.
MAX_THREADS = 512
THREADS_DESCRIPTION = (
    f"communicator entries in properties.json: CUDA threads one program may use (1-{MAX_THREADS}; "
    f"per pod: {THREADS_ANNOTATION}); thread N+1 aborts the program"
)

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


def parse_threads(value: object) -> int:
    """The value of ``gvirtus.io/threads``; ValueError with a message for the pod's owner."""
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_THREADS:
        raise ValueError(
            f"annotation {THREADS_ANNOTATION}={clip(repr(value))} must be a whole number from 1 "
            f"to {MAX_THREADS}: the CUDA threads of one program (each needs its own GVirtuS "
            "communicator entry)"
        )
    return int(text)


def communicator_entry(
    server_address: str, port: int | str, plugins: Sequence[str]
) -> dict[str, Any]:
    """One TCP communicator to the backend; the port is a string (a number aborts GVirtuS)."""
    return {
        "endpoint": {
            "suite": "tcp/ip",
            "protocol": "tcp",
            "server_address": server_address,
            "port": str(port),
        },
        "plugins": list(plugins),
    }


def frontend_config(
    server_address: str, port: int | str, plugins: Sequence[str], threads: int = DEFAULT_THREADS
) -> dict[str, Any]:
    """GVirtuS ``properties.json``: the same communicator ``threads`` times, so every thread
    of a program up to that many reaches the one backend."""
    entry = communicator_entry(server_address, port, plugins)
    return {"communicator": [entry] * threads, "secure_application": False}


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one encoder, not one per call


def compact_json(value: object) -> str:
    return _COMPACT.encode(value)


def properties_json(
    server_address: str, port: int | str, plugins: Sequence[str], threads: int = DEFAULT_THREADS
) -> str:
    """``frontend_config`` as the compact JSON text the pod annotation holds. Every entry is the
    same, so it is encoded once and its text repeated (a test holds it to the encoder's text)."""
    entry = _COMPACT.encode(communicator_entry(server_address, port, plugins))
    entries = ",".join([entry] * threads)
    return f'{{"communicator":[{entries}],"secure_application":false}}'
