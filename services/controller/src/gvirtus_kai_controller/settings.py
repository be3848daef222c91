"""Controller settings, read from ``GVIRTUS_KAI_*`` environment variables."""

from __future__ import annotations

from typing import Annotated, Literal

from gvirtus_kai_common.gvirtus import (
    DEFAULT_PLUGINS,
    DEFAULT_THREADS,
    MAX_THREADS,
    THREADS_DESCRIPTION,
    split_plugins,
)
from gvirtus_kai_common.labels import is_dns_subdomain, label_key_problem
from gvirtus_kai_common.settings import HealthServerSettings
from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from gvirtus_kai_controller.placement import Policy

OnBackendLoss = Literal["keep", "evict"]


class Settings(HealthServerSettings):
    namespace: str = Field(
        "gvirtus-system", description="the release namespace: backend EndpointSlices, the Lease"
    )
    backend_service: str = Field(
        "gvirtus-backend-headless", description="the backend's headless Service"
    )
    backend_port_name: str = Field(
        "gvirtus", description="the EndpointSlice port GVirtuS pods connect to"
    )
    enable_label: str = Field(
        "gvirtus.io/enabled", description="pods with this label set to 'true' are watched"
    )
    plugins: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_PLUGINS, description="GVirtuS plugins written into properties.json"
    )
    frontend_threads: int = Field(
        DEFAULT_THREADS, ge=1, le=MAX_THREADS, description=THREADS_DESCRIPTION
    )
    policy: Policy = Field("leastPods", description="leastPods, random or sameZone")
    max_pods_per_backend: int = Field(0, ge=0, description="pods per backend; 0: unlimited")
    on_backend_loss: OnBackendLoss = Field(
        "keep", description="keep (report only) or evict (owned pods, after the grace period)"
    )
    backend_loss_grace_seconds: float = Field(
        60.0, ge=0, description="how long a backend may be gone before its pods are evicted"
    )
    leader_election: bool = Field(False, description="take a Lease before assigning")
    lease_name: str = Field("gvirtus-controller", description="the Lease's name")
    lease_duration_seconds: float = Field(
        15.0, gt=0, description="a leader that stops renewing is replaced after this"
    )
    pod_name: str = Field("", description="this replica's name (holder identity); empty: host")

    @field_validator("plugins", mode="before")
    @classmethod
    def _split_plugins(cls, value: object) -> object:
        return split_plugins(value) if isinstance(value, str) else value

    @field_validator("namespace", "backend_service", "lease_name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not is_dns_subdomain(value):
            raise ValueError(f"{value!r} is not a Kubernetes object name")
        return value

    @field_validator("enable_label")
    @classmethod
    def _check_label(cls, value: str) -> str:
        if problem := label_key_problem(value):
            raise ValueError(f"{value!r}: {problem}")
        return value

    @field_validator("backend_port_name")
    @classmethod
    def _check_port_name(cls, value: str) -> str:
        if not value:
            raise ValueError("the EndpointSlice port name is empty")
        return value
