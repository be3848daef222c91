"""Settings: every bad value rejected naming its variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gvirtus_kai_common.settings import describe_settings_error
from gvirtus_kai_device_plugin.settings import Settings
from pydantic import ValidationError

PLUGIN = [sys.executable, "-m", "gvirtus_kai_device_plugin"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the process environment: start every test from none of ours."""
    for key in list(os.environ):
        if key.startswith("GVIRTUS_KAI_"):
            monkeypatch.delenv(key)


def settings_error(**env: str) -> str:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(f"GVIRTUS_KAI_{key}", value)
        with pytest.raises(ValidationError) as raised:
            Settings()
    return "\n".join(describe_settings_error(raised.value))


def test_socket_name_is_derived_from_the_resource_name() -> None:
    assert Settings(resource_name="example.com/vgpu").socket_name == "gvirtus-example.com-vgpu.sock"


def test_cdi_spec_file_is_named_after_vendor_and_class() -> None:
    assert Settings(cdi_dir=Path("/cdi")).cdi_spec_path == Path("/cdi/gvirtus.io-vgpu.json")


@pytest.mark.parametrize("count", ["0", "-3", "many", "1.5", ""])
def test_device_count_must_be_a_positive_integer(count: str) -> None:
    assert settings_error(DEVICE_COUNT=count).startswith("GVIRTUS_KAI_DEVICE_COUNT:")


@pytest.mark.parametrize(
    "name",
    ["gpu", "nvidia.com/", "/gpu", "Nvidia.com/gpu", "nvidia.com/g/pu", "kubernetes.io/gpu",
     "nvidia.com/-gpu", "bad_domain.com/gpu"],
)  # fmt: skip
def test_resource_name_must_be_an_extended_resource(name: str) -> None:
    assert settings_error(RESOURCE_NAME=name).startswith("GVIRTUS_KAI_RESOURCE_NAME:")


@pytest.mark.parametrize(
    "name", ["example.com/gpu", "gpu.example.com/vgpu-1", "gvirtus.io/virtual_gpu"]
)
def test_resource_name_accepts_extended_resources(name: str) -> None:
    assert Settings(resource_name=name).resource_name == name


@pytest.mark.parametrize(
    "kind", ["vgpu", "gvirtus.io/", "/vgpu", "gvirtus.io/v.gpu", "1vendor.com/vgpu", "a/b/c"]
)
def test_cdi_kind_must_be_vendor_slash_class(kind: str) -> None:
    assert settings_error(CDI_KIND=kind).startswith("GVIRTUS_KAI_CDI_KIND:")


@pytest.mark.parametrize("kind", ["gvirtus.io/vgpu", "vendor.example/gpu_2", "v/c"])
def test_cdi_kind_accepts_vendor_slash_class(kind: str) -> None:
    assert Settings(cdi_kind=kind).cdi_kind == kind


def test_relative_plugin_dir_is_rejected() -> None:
    assert settings_error(PLUGIN_DIR="plugins").startswith("GVIRTUS_KAI_PLUGIN_DIR:")


def test_relative_pod_resources_socket_is_rejected() -> None:
    assert settings_error(POD_RESOURCES_SOCKET="kubelet.sock").startswith(
        "GVIRTUS_KAI_POD_RESOURCES_SOCKET:"
    )


def run_plugin(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    full_env.update({f"GVIRTUS_KAI_{k}": v for k, v in env.items()})
    return subprocess.run(
        PLUGIN, env=full_env, capture_output=True, text=True, timeout=30, check=False
    )


def test_process_exits_2_naming_a_bad_device_count(plugin_dir: Path, cdi_dir: Path) -> None:
    result = run_plugin(
        {"DEVICE_COUNT": "zero", "PLUGIN_DIR": str(plugin_dir), "CDI_DIR": str(cdi_dir)}
    )
    assert (result.returncode, "GVIRTUS_KAI_DEVICE_COUNT" in result.stderr) == (2, True)


def test_process_exits_2_naming_a_bad_cdi_kind(plugin_dir: Path, cdi_dir: Path) -> None:
    result = run_plugin(
        {"CDI_KIND": "no-slash", "PLUGIN_DIR": str(plugin_dir), "CDI_DIR": str(cdi_dir)}
    )
    assert (result.returncode, "GVIRTUS_KAI_CDI_KIND" in result.stderr) == (2, True)


def test_process_exits_2_when_the_plugin_dir_is_missing(host_dir: Path, cdi_dir: Path) -> None:
    result = run_plugin({"PLUGIN_DIR": str(host_dir / "absent"), "CDI_DIR": str(cdi_dir)})
    assert (result.returncode, "GVIRTUS_KAI_PLUGIN_DIR" in result.stderr) == (2, True)


def test_process_exits_2_when_the_cdi_dir_is_unwritable(host_dir: Path, plugin_dir: Path) -> None:
    # A regular file where a directory should be: unwritable even for root, unlike chmod.
    blocker = host_dir / "file"
    blocker.write_text("")
    result = run_plugin({"PLUGIN_DIR": str(plugin_dir), "CDI_DIR": str(blocker / "cdi")})
    assert (result.returncode, "GVIRTUS_KAI_CDI_DIR" in result.stderr) == (2, True)


def test_process_creates_a_missing_cdi_dir(host_dir: Path) -> None:
    # Both directories are checked before exiting: the missing plugin dir ends the run, but the
    # CDI dir, which nothing guarantees to exist on a node, has been created by then.
    result = run_plugin({"PLUGIN_DIR": str(host_dir / "absent"), "CDI_DIR": str(host_dir / "c")})
    assert (result.returncode, (host_dir / "c").is_dir()) == (2, True)
    assert "GVIRTUS_KAI_CDI_DIR" not in result.stderr


def test_help_lists_the_pod_resources_socket_with_its_default() -> None:
    result = subprocess.run(
        [*PLUGIN, "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    [listed] = [
        line.split() for line in result.stdout.splitlines() if "POD_RESOURCES_SOCKET" in line
    ]
    assert (result.returncode, listed) == (
        0,
        ["GVIRTUS_KAI_POD_RESOURCES_SOCKET", "/var/lib/kubelet/pod-resources/kubelet.sock"],
    )
