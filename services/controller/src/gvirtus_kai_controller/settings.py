"""Controller settings, read from ``GVIRTUS_KAI_*`` environment variables."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from gvirtus_kai_common.gvirtus import (
    DEFAULT_PLUGINS,
    DEFAULT_THREADS,
    MAX_THREADS,
    THREADS_DESCRIPTION,
    split_plugins,
)
from gvirtus_kai_common.labels import is_dns_subdomain, label_key_problem
from gvirtus_kai_common.settings import HealthServerSettings
from pydantic import Field, field_validator, model_validator
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
    agent_port_name: str = Field(
        "agent", description="the EndpointSlice port of each backend's load agent (GET /load)"
    )
    policy: Policy = Field("leastPods", description="leastPods, leastLoaded, random or sameZone")
    max_pods_per_backend: int = Field(0, ge=0, description="pods per backend; 0: unlimited")
    max_clients_per_backend: int = Field(
        0,
        ge=0,
        description="measured clients plus pinned pods not connected yet, per backend; 0: no limit",
    )
    load_poll_seconds: float = Field(
        2.0, gt=0, description="how often every ready backend's agent is asked for its load"
    )
    load_timeout_seconds: float = Field(
        1.0, gt=0, description="an agent slower than this counts as unknown until the next poll"
    )
    demand_enabled: bool = Field(
        False, description="create placeholder pods a cluster autoscaler sees when pods wait"
    )
    demand_wait_seconds: float = Field(
        60.0, ge=0, description="how long pods wait without room before placeholders appear"
    )
    demand_max_placeholders: int = Field(4, ge=0, description="placeholder pods at most")
    demand_owner: str = Field(
        "", description="the Deployment (release namespace) owning the placeholder pods"
    )
    demand_image: str = Field("", description="the placeholders' image (a pause image)")
    demand_priority_class: str = Field("", description="the placeholders' priority class")
    demand_gpu_resource: str = Field(
        "nvidia.com/gpu", description="the physical GPU resource each placeholder requests one of"
    )
    demand_requests: dict[str, str] = Field(
        default_factory=dict, description="more requests of each placeholder (JSON: a backend's)"
    )
    demand_node_selector: dict[str, str] = Field(
        default_factory=dict, description="the placeholders' nodeSelector (JSON: the backend's)"
    )
    demand_tolerations: list[dict[str, Any]] = Field(
        default_factory=list, description="the placeholders' tolerations (JSON: the backend's)"
    )
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

    @field_validator("backend_port_name", "agent_port_name")
    @classmethod
    def _check_port_name(cls, value: str) -> str:
        if not value:
            raise ValueError("the EndpointSlice port name is empty")
        return value

    @model_validator(mode="after")
    def _check_demand(self) -> Settings:
        if self.demand_enabled and not (self.demand_owner and self.demand_image):
            raise ValueError("DEMAND_ENABLED needs DEMAND_OWNER and DEMAND_IMAGE")
        if self.demand_owner and not is_dns_subdomain(self.demand_owner):
            raise ValueError(f"DEMAND_OWNER {self.demand_owner!r} is not a Kubernetes object name")
        return self
