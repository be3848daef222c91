"""Device plugin settings, read from ``GVIRTUS_KAI_*`` environment variables."""

from __future__ import annotations

import re
from pathlib import Path

from gvirtus_kai_common.labels import is_dns_subdomain
from gvirtus_kai_common.settings import HealthServerSettings
from pydantic import Field, field_validator

_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
# CDI names (container-device-interface parser rules, spec 0.5.0 which is what we write):
# vendor starts with a letter, may hold dots; class starts with a letter, no dots (dots in the
# class need spec 0.6.0, which containerd 1.7.0's CDI library rejects).
_CDI_VENDOR = re.compile(r"^[A-Za-z]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_CDI_CLASS = re.compile(r"^[A-Za-z]([-A-Za-z0-9_]*[A-Za-z0-9])?$")


class Settings(HealthServerSettings):
    resource_name: str = Field(
        "nvidia.com/gpu", description="extended resource advertised to the kubelet"
    )
    device_count: int = Field(
        16, ge=1, le=1024, description="virtual GPU slots on the node (1-1024)"
    )
    plugin_dir: Path = Field(
        Path("/var/lib/kubelet/device-plugins"), description="the kubelet's device plugin dir"
    )
    cdi_dir: Path = Field(Path("/var/run/cdi"), description="where the CDI spec is written")
    cdi_kind: str = Field("gvirtus.io/vgpu", description="CDI kind of the virtual devices")
    pod_resources_socket: Path = Field(
        Path("/var/lib/kubelet/pod-resources/kubelet.sock"),
        description="the kubelet's PodResources socket, asked on stop: the CDI spec is removed "
        "only if no container holds our devices",
    )

    @field_validator("resource_name")
    @classmethod
    def _check_resource_name(cls, value: str) -> str:
        """An extended resource name as the kubelet accepts it: ``<domain>/<name>``."""
        domain, sep, name = value.partition("/")
        if not sep or not is_dns_subdomain(domain):
            raise ValueError(f"{value!r} is not an extended resource name like vendor.com/device")
        if not _QUALIFIED_NAME.match(name):
            raise ValueError(f"{value!r}: {name!r} is not a valid resource name")
        if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
            raise ValueError(f"{value!r}: kubernetes.io is reserved for native resources")
        # The API server also accepts a quota for it, named requests.<name>: keep that valid too.
        if len(f"requests.{name}") > 63:
            raise ValueError(f"{value!r}: the name part is too long")
        return value

    @field_validator("cdi_kind")
    @classmethod
    def _check_cdi_kind(cls, value: str) -> str:
        vendor, sep, device_class = value.partition("/")
        if not sep or not _CDI_VENDOR.match(vendor) or not _CDI_CLASS.match(device_class):
            raise ValueError(
                f"{value!r} is not a CDI kind like vendor.com/class "
                "(vendor: letters, digits, '-', '_', '.'; class: letters, digits, '-', '_'; "
                "both start with a letter)"
            )
        return value

    @field_validator("plugin_dir", "cdi_dir", "pod_resources_socket")
    @classmethod
    def _check_absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{str(value)!r} must be an absolute path")
        return value

    @property
    def socket_name(self) -> str:
        """Our socket's file name in the plugin dir, unique per resource name."""
        return f"gvirtus-{self.resource_name.replace('/', '-')}.sock"

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / self.socket_name

    @property
    def kubelet_socket(self) -> Path:
        return self.plugin_dir / "kubelet.sock"

    @property
    def cdi_spec_path(self) -> Path:
        """CDI's file naming convention: ``<vendor>-<class>.json``."""
        return self.cdi_dir / f"{self.cdi_kind.replace('/', '-')}.json"
