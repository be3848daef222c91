"""The CDI spec on disk: valid for the container runtimes, consistent with Allocate, atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from gvirtus_kai_device_plugin import files
from gvirtus_kai_device_plugin.plugin import DevicePlugin
from gvirtus_kai_device_plugin.settings import Settings

from tests.device_plugin.cdispec import load_valid_spec, resolve
from tests.device_plugin.conftest import RunningPlugin
from tests.device_plugin.kubelet import KubeletEmulator


def read_spec(settings: Settings) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(settings.cdi_spec_path.read_text())
    return spec


def test_cdi_spec_is_valid(registered_plugin: RunningPlugin, settings: Settings) -> None:
    assert load_valid_spec(settings.cdi_spec_path)["kind"] == "gvirtus.io/vgpu"


def test_cdi_spec_describes_every_advertised_device(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator, settings: Settings
) -> None:
    names = [device["name"] for device in read_spec(settings)["devices"]]
    assert names == [device_id for device_id, _ in kubelet.device_lists[0]]


async def test_cdi_names_from_allocate_resolve_to_spec_devices_naming_the_same_slot(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator, settings: Settings
) -> None:
    response = await kubelet.allocate(["gvirtus-vgpu-3", "gvirtus-vgpu-1"])
    names = [device.name for device in response.container_responses[0].cdi_devices]
    assert resolve(settings.cdi_spec_path, names) == {
        "gvirtus-vgpu-1": ["GVIRTUS_VGPU_SLOT_1=gvirtus-vgpu-1"],
        "gvirtus-vgpu-3": ["GVIRTUS_VGPU_SLOT_3=gvirtus-vgpu-3"],
    }


def test_spec_uses_the_configured_kind_and_file_name(make_settings: Any) -> None:
    settings = make_settings(cdi_kind="example.com/gpu")
    DevicePlugin(settings).cdi_spec.ensure()
    assert (settings.cdi_spec_path.name, read_spec(settings)["kind"]) == (
        "example.com-gpu.json",
        "example.com/gpu",
    )


def test_atomic_write_replaces_the_file_and_leaves_no_temp_files(host_dir: Path) -> None:
    target = host_dir / "spec.json"
    target.write_text("old")
    inode_before = target.stat().st_ino
    files.write_atomically(target, {"new": True})
    assert json.loads(target.read_text()) == {"new": True}
    assert target.stat().st_ino != inode_before  # renamed into place, not rewritten in place
    assert sorted(p.name for p in host_dir.iterdir()) == ["spec.json"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(host_dir: Path) -> None:
    target = host_dir / "spec.json"
    target.write_text('{"old": true}')
    with pytest.raises(TypeError):
        files.write_atomically(target, {"unserialisable": object()})
    assert (target.read_text(), sorted(os.listdir(host_dir))) == ('{"old": true}', ["spec.json"])


def test_spec_file_is_readable_by_the_runtime(
    registered_plugin: RunningPlugin, settings: Settings
) -> None:
    assert settings.cdi_spec_path.stat().st_mode & 0o777 == 0o644
