"""Asking each ready backend's agent for its load (``GET /load``), all at once, bounded.

An agent's answer is believed only when it is well formed and consistent: every field of the
expected type (no coercion: ``"4"`` is no count), counts non-negative, no more distinct clients
than connections, the GVirtuS port the backend serves. Anything else (no agent port, no answer
within the timeout, an error status, a body too large, nonsense) makes that backend's load
unknown until the next poll; placement then counts its pinned pods, as without an agent.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

import httpx2
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from gvirtus_kai_controller.placement import Backend, BackendLoad

# A /load answer lists each client address once; a thousand clients fit in ~20 KiB.
MAX_BODY_BYTES = 1024 * 1024
# Connections kept open to agents between polls: one per backend, up to this many.
KEEPALIVE_CONNECTIONS = 256

Outcome = Literal["ok", "no_agent_port", "timeout", "error", "status", "too_large", "invalid"]


def _client_address(value: str) -> str:
    """A client's address in the form a pod IP has (IPv4-mapped IPv6 as IPv4)."""
    address = ipaddress.ip_address(value)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class GpuReading(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    index: int = Field(ge=0)
    utilization: float = Field(ge=0.0, le=1.0)
    memoryUsedBytes: int = Field(ge=0)


class AgentAnswer(BaseModel):
    """The agent's ``/load`` JSON; unknown fields are ignored, known ones checked strictly."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    pod: str
    listening: bool
    port: int = Field(ge=1, le=65535)
    connections: int = Field(ge=0)
    clients: list[Annotated[str, AfterValidator(_client_address)]]
    gpus: list[GpuReading]
    gpuReadings: Literal["nvml", "none"]

    @model_validator(mode="after")
    def _consistent(self) -> AgentAnswer:
        if len(set(self.clients)) > self.connections:
            raise ValueError("more distinct clients than connections")
        return self

    def load(self) -> BackendLoad:
        return BackendLoad(
            clients=frozenset(self.clients),
            connections=self.connections,
            gpu_utilization=tuple(gpu.utilization for gpu in self.gpus),
        )


@dataclass(frozen=True)
class Poll:
    """One backend's poll: its load, or why it is unknown."""

    outcome: Outcome
    load: BackendLoad | None = None


class LoadPoller:
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(timeout),
            limits=httpx2.Limits(
                max_connections=None, max_keepalive_connections=KEEPALIVE_CONNECTIONS
            ),
            # Pod IPs are dialled directly: a proxy from the environment would not reach them.
            trust_env=False,
            follow_redirects=False,
        )

    async def poll(self, backends: Iterable[Backend]) -> dict[str, Poll]:
        """Every backend's load, asked concurrently; by address."""
        targets = list(backends)
        polls = await asyncio.gather(*(self.poll_one(backend) for backend in targets))
        return {backend.address: poll for backend, poll in zip(targets, polls, strict=True)}

    async def poll_one(self, backend: Backend) -> Poll:
        if backend.agent_port is None:
            return Poll("no_agent_port")
        url = f"http://{backend.ip}:{backend.agent_port}/load"
        body = bytearray()
        try:
            # One deadline for the whole answer: a trickling agent is as slow as a silent one.
            async with asyncio.timeout(self._timeout):
                async with self._http.stream("GET", url) as response:
                    if response.status_code != 200:
                        return Poll("status")
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_BODY_BYTES:
                            return Poll("too_large")
        except (TimeoutError, httpx2.TimeoutException):
            return Poll("timeout")
        except httpx2.HTTPError:
            return Poll("error")
        try:
            answer = AgentAnswer.model_validate_json(bytes(body))
        except ValidationError:
            return Poll("invalid")
        if answer.port != backend.port:  # it measures some other port than the one we pin to
            return Poll("invalid")
        return Poll("ok", answer.load())

    async def close(self) -> None:
        await self._http.aclose()
