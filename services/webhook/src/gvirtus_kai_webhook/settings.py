"""Webhook and injector settings, read from ``GVIRTUS_KAI_*`` environment variables."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import PurePosixPath
from typing import Annotated, Literal

from gvirtus_kai_common.gvirtus import (
    DEFAULT_PLUGINS,
    DEFAULT_THREADS,
    MAX_THREADS,
    THREADS_DESCRIPTION,
    split_plugins,
)
from gvirtus_kai_common.labels import is_dns_subdomain, label_key_problem, label_value_problem
from gvirtus_kai_common.settings import ServiceSettings
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from gvirtus_kai_webhook.gpu_guard import NodeRequirement, parse_node_requirements

Strategy = Literal["mount", "sed"]
STRATEGIES: tuple[Strategy, ...] = ("mount", "sed")
# Who pins a pod to a backend: the placement controller (the pod is gated until it writes the
# address) or the webhook itself at admission (DNS).
Placement = Literal["controller", "dns"]
PLACEMENTS: tuple[Placement, ...] = ("controller", "dns")


class Nameserver(BaseModel, frozen=True):
    host: str
    port: int = 53


def _parse_nameserver(entry: str) -> Nameserver:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``::1`` or ``[::1]:5353``."""
    entry = entry.strip()
    host, port = entry, 53
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)  # raises ValueError naming the bad address
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return Nameserver(host=host, port=port)


class Settings(ServiceSettings):
    listen_host: str = Field(
        "0.0.0.0", description="address to serve HTTPS on ('::': both families)"
    )
    listen_port: int = Field(8443, ge=1, le=65535, description="HTTPS port")
    tls_cert_file: str = Field(
        "/tls/tls.crt", description="serving certificate (PEM), reloaded on change"
    )
    tls_key_file: str = Field("/tls/tls.key", description="its private key (PEM, unencrypted)")
    placement: Placement = Field(
        "controller",
        description="controller: pods are gated for the placement controller (no DNS lookup); "
        "dns: every pod is pinned at admission to a backend pod found by DNS",
    )
    backend_host: str = Field(
        "gvirtus-backend-headless.gvirtus-system.svc.cluster.local",
        description="DNS name of the headless Service of the ready GVirtuS backend pods",
    )
    backend_port: int = Field(
        9999, ge=1, le=65535, description="the backend pods' container port, written with their IP"
    )
    dns_nameservers: Annotated[tuple[Nameserver, ...], NoDecode] = Field(
        (), description="ip[:port],... to ask; empty: the system resolver"
    )
    dns_timeout_seconds: float = Field(2.0, gt=0, le=30, description="bound on one lookup")
    dns_cache_max_seconds: float = Field(
        30.0, ge=0, description="longest reuse of a resolved address, whatever its TTL"
    )
    strategy: Strategy = Field("mount", description="mount or sed (per pod: gvirtus.io/strategy)")
    default_gvirtus_home: str = Field(
        "/usr/local/gvirtus", description="GVirtuS home in the image (per pod: gvirtus.io/home)"
    )
    plugins: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_PLUGINS, description="GVirtuS plugins in the frontend config"
    )
    frontend_threads: int = Field(
        DEFAULT_THREADS, ge=1, le=MAX_THREADS, description=THREADS_DESCRIPTION
    )
    frontend_label: str = Field(
        "gvirtus.io/frontend.allowed=true", description="node label GVirtuS pods are pinned to"
    )
    enable_label: str = Field(
        "gvirtus.io/enabled", description="pod label whose value 'true' asks for GVirtuS"
    )
    gpu_resource: str = Field("nvidia.com/gpu", description="the GPU extended resource")
    virtual_gpu_nodes: str = Field(
        "gvirtus.io/frontend.allowed=true,nvidia.com/gpu.present!=true",
        description="the labels of the nodes whose GPUs are virtual (the device plugin's), as "
        "key=value,key!=value: the guard route keeps GPU pods that are no GVirtuS pods off them",
    )
    # Bounds on what one client may hold; see the server module.
    idle_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="a connection with no request in progress is closed after this: before the "
        "first request, between keep-alive requests, and while a request head trickles in",
    )
    body_timeout_seconds: float = Field(
        10.0, gt=0, description="a request body must arrive whole within this (else 408)"
    )
    max_connections: int = Field(
        256, ge=1, description="connections held at once; more are refused and counted"
    )
    # Rollout: on SIGTERM readiness turns 503 at once, requests are served for the delay, then
    # the listener closes, idle connections close, and in-flight reviews get the drain time.
    # terminationGracePeriodSeconds must cover preStop + delay + drain.
    shutdown_delay_seconds: float = Field(
        0.2, ge=0, description="after SIGTERM, keep serving this long with readiness 503"
    )
    shutdown_drain_seconds: float = Field(
        10.0, ge=0, description="then, the longest in-flight reviews get to finish"
    )

    @field_validator("dns_nameservers", mode="before")
    @classmethod
    def _split_nameservers(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(_parse_nameserver(e) for e in value.split(",") if e.strip())
        return value

    @field_validator("plugins", mode="before")
    @classmethod
    def _split_plugins(cls, value: object) -> object:
        if isinstance(value, str):
            return split_plugins(value)
        if isinstance(value, tuple | list) and not value:
            raise ValueError("at least one GVirtuS plugin is needed")
        return value

    @field_validator("virtual_gpu_nodes")
    @classmethod
    def _check_virtual_gpu_nodes(cls, value: str) -> str:
        parse_node_requirements(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("backend_host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if not is_dns_subdomain(value.rstrip(".")):
            raise ValueError(f"{value!r} is not a DNS name")
        return value

    @field_validator("default_gvirtus_home")
    @classmethod
    def _check_home(cls, value: str) -> str:
        if not PurePosixPath(value).is_absolute():
            raise ValueError(f"{value!r} must be an absolute path")
        return value.rstrip("/") or "/"

    @field_validator("frontend_label")
    @classmethod
    def _check_label(cls, value: str) -> str:
        key, sep, label_value = value.partition("=")
        if not sep:
            raise ValueError(f"{value!r} is not a label in the form key=value")
        problem = label_key_problem(key) or label_value_problem(label_value)
        if problem:
            raise ValueError(f"{value!r}: {problem}")
        return value

    @field_validator("enable_label")
    @classmethod
    def _check_enable_label(cls, value: str) -> str:
        problem = label_key_problem(value)
        if problem:
            raise ValueError(f"{value!r}: {problem}")
        return value

    @cached_property
    def virtual_gpu_requirements(self) -> tuple[NodeRequirement, ...]:
        return parse_node_requirements(self.virtual_gpu_nodes)

    @property
    def frontend_label_key(self) -> str:
        return self.frontend_label.partition("=")[0]

    @property
    def frontend_label_value(self) -> str:
        return self.frontend_label.partition("=")[2]
