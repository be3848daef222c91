"""The CDI spec outlives restarts: containers of running GVirtuS pods that restart must always find
it (else the runtime fails them with ``unresolvable CDI devices``).

It is on disk before every registration, kept on a clean stop while a container holds one of our
devices (``test_cdi_release`` covers when it goes), and restored when it goes missing or is
changed. In-process tests pin down each rule; process tests replay the restarts for real.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from gvirtus_kai_device_plugin import cdi
from gvirtus_kai_device_plugin.plugin import DevicePlugin
from gvirtus_kai_device_plugin.settings import Settings

from tests.device_plugin.cdispec import UnresolvableCDIDevice, load_valid_spec, resolve
from tests.device_plugin.conftest import DEFAULT_SPEC_NAME, RunningPlugin
from tests.device_plugin.kubelet import WAIT_SECONDS, KubeletEmulator
from tests.device_plugin.process import PluginProcess, running_plugin

# A deleted or altered spec is back within one check period, plus slack for a loaded machine.
RESTORE_BOUND_SECONDS = cdi.CHECK_SECONDS + 1.0
# Long enough that, within a test, only a registration can write the spec.
NO_PERIODIC_CHECK = 3600.0
FAST_CHECK = 0.05


async def wait_until(condition: Callable[[], bool], within: float = WAIT_SECONDS) -> float:
    """Poll ``condition`` every 10 ms; the seconds it took to hold (fails after ``within``)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            pytest.fail(f"still false after {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def spec_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


async def allocated_cdi_names(kubelet: KubeletEmulator, *ids: str) -> list[str]:
    response = await kubelet.allocate(list(ids))
    return [device.name for device in response.container_responses[0].cdi_devices]


def block_directory(directory: Path) -> None:
    """Replace an empty directory by a regular file: nothing can be created in it any more."""
    directory.rmdir()
    directory.write_text("a file where a directory should be")


def start(settings: Settings, check_seconds: float) -> RunningPlugin:
    """The plugin in-process with its own check period (stopped by the test)."""
    return RunningPlugin(DevicePlugin(settings, cdi_check_seconds=check_seconds))


# --- rules, in-process ------------------------------------------------------------------------


async def test_spec_is_on_disk_when_the_registration_reaches_the_kubelet(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator, settings: Settings
) -> None:
    at_registration = kubelet.registrations[0].cdi_spec
    assert at_registration is not None
    assert at_registration == settings.cdi_spec_path.read_bytes()


async def test_spec_deleted_while_the_kubelet_is_down_is_written_again_before_registering(
    settings: Settings, kubelet: KubeletEmulator, plugin_dir: Path
) -> None:
    running = start(settings, NO_PERIODIC_CHECK)
    try:
        await kubelet.wait_for_registrations(1)
        original = settings.cdi_spec_path.read_bytes()
        await kubelet.stop()
        settings.cdi_spec_path.unlink()
        async with KubeletEmulator(plugin_dir, cdi_spec=settings.cdi_spec_path) as restarted:
            await restarted.wait_for_registrations(1)
            assert restarted.registrations[0].cdi_spec == original
    finally:
        await running.stop()


async def test_clean_stop_keeps_the_spec_unchanged_while_a_container_holds_a_device(
    registered_plugin: RunningPlugin, kubelet: KubeletEmulator, settings: Settings
) -> None:
    await kubelet.allocate(["gvirtus-vgpu-0"])
    before = settings.cdi_spec_path.read_bytes()
    await registered_plugin.stop()
    assert spec_bytes(settings.cdi_spec_path) == before


async def test_a_spec_already_in_place_is_left_as_it_is_by_the_next_plugin(
    settings: Settings, kubelet: KubeletEmulator
) -> None:
    first = start(settings, NO_PERIODIC_CHECK)
    await kubelet.wait_for_registrations(1)
    await kubelet.allocate(["gvirtus-vgpu-0"])  # a pod holding a device keeps it on disk
    await first.stop()
    inode = settings.cdi_spec_path.stat().st_ino
    second = start(settings, NO_PERIODIC_CHECK)
    try:
        await kubelet.wait_for_registrations(2)
        assert settings.cdi_spec_path.stat().st_ino == inode  # not even replaced by a rename
    finally:
        await second.stop()


async def test_does_not_register_until_the_spec_can_be_written(
    settings: Settings, kubelet: KubeletEmulator, cdi_dir: Path
) -> None:
    block_directory(cdi_dir)
    running = start(settings, NO_PERIODIC_CHECK)
    try:
        await asyncio.sleep(1.0)
        assert (kubelet.registrations, running.plugin.registered) == ([], False)
        os.unlink(cdi_dir)
        await kubelet.wait_for_registrations(1)
        assert kubelet.registrations[0].cdi_spec is not None
    finally:
        await running.stop()


async def test_a_spec_made_unreadable_for_the_runtime_gets_its_mode_back(
    settings: Settings, kubelet: KubeletEmulator
) -> None:
    running = start(settings, FAST_CHECK)
    try:
        await kubelet.wait_for_registrations(1)
        settings.cdi_spec_path.chmod(0o600)
        await wait_until(lambda: stat.S_IMODE(settings.cdi_spec_path.stat().st_mode) == 0o644)
    finally:
        await running.stop()


async def test_a_fifo_in_place_of_the_spec_neither_blocks_the_plugin_nor_stays(
    settings: Settings, kubelet: KubeletEmulator
) -> None:
    running = start(settings, FAST_CHECK)
    try:
        await kubelet.wait_for_registrations(1)
        settings.cdi_spec_path.unlink()
        os.mkfifo(settings.cdi_spec_path)
        await wait_until(lambda: settings.cdi_spec_path.is_file())
        names = await allocated_cdi_names(kubelet, "gvirtus-vgpu-2")  # the loop still serves
        assert resolve(settings.cdi_spec_path, names) == {
            "gvirtus-vgpu-2": ["GVIRTUS_VGPU_SLOT_2=gvirtus-vgpu-2"]
        }
    finally:
        await running.stop()


async def test_each_restore_is_counted_and_logged_as_a_warning_with_its_reason(
    settings: Settings, kubelet: KubeletEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    running = start(settings, FAST_CHECK)
    try:
        await kubelet.wait_for_registrations(1)
        with caplog.at_level(logging.WARNING, logger="gvirtus_kai_device_plugin"):
            settings.cdi_spec_path.unlink()
            await wait_until(lambda: settings.cdi_spec_path.exists())
            settings.cdi_spec_path.write_text("{}")
            await wait_until(lambda: settings.cdi_spec_path.read_text() != "{}")
        repairs = running.plugin.registry.get_sample_value(
            "gvirtus_device_plugin_cdi_spec_repairs_total"
        )
        restored = [r for r in caplog.records if r.msg == "CDI spec restored"]
        reasons = [getattr(r, "reason", None) for r in restored]
        assert (repairs, reasons) == (2, ["missing", "content changed"])
    finally:
        await running.stop()


# --- restarts and damage, with the real process ----------------------------------------------


async def test_spec_stays_after_sigterm_while_a_container_holds_a_device(
    plugin_process: PluginProcess, kubelet: KubeletEmulator
) -> None:
    await kubelet.allocate(["gvirtus-vgpu-1"])
    before = plugin_process.cdi_spec.read_bytes()
    plugin_process.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(plugin_process.process.wait(), WAIT_SECONDS) == 0
    assert spec_bytes(plugin_process.cdi_spec) == before
    load_valid_spec(plugin_process.cdi_spec)


async def test_allocations_resolve_while_the_plugin_restarts(
    plugin_process: PluginProcess, kubelet: KubeletEmulator, plugin_dir: Path, cdi_dir: Path
) -> None:
    names = await allocated_cdi_names(kubelet, "gvirtus-vgpu-1")
    plugin_process.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(plugin_process.process.wait(), WAIT_SECONDS)
    # No plugin runs: a container of a running pod restarting now still finds its devices.
    stopped = resolve(plugin_process.cdi_spec, names)
    async with running_plugin(plugin_dir, cdi_dir) as restarted:
        await kubelet.wait_for_registrations(2)
        assert kubelet.registrations[1].cdi_spec == restarted.cdi_spec.read_bytes()
        again = resolve(restarted.cdi_spec, await allocated_cdi_names(kubelet, "gvirtus-vgpu-1"))
    assert stopped == again == {"gvirtus-vgpu-1": ["GVIRTUS_VGPU_SLOT_1=gvirtus-vgpu-1"]}


async def test_spec_is_present_after_a_kubelet_restart_and_reregistration(
    plugin_process: PluginProcess, kubelet: KubeletEmulator, plugin_dir: Path, cdi_dir: Path
) -> None:
    await kubelet.stop()  # removes kubelet.sock, as a stopping kubelet does
    down = resolve(plugin_process.cdi_spec, ["gvirtus.io/vgpu=gvirtus-vgpu-0"])
    async with KubeletEmulator(plugin_dir, cdi_spec=cdi_dir / DEFAULT_SPEC_NAME) as restarted:
        await restarted.wait_for_registrations(1)
        assert restarted.registrations[0].cdi_spec is not None
        names = await allocated_cdi_names(restarted, "gvirtus-vgpu-0", "gvirtus-vgpu-1")
        assert resolve(plugin_process.cdi_spec, names) == {
            **down,
            "gvirtus-vgpu-1": ["GVIRTUS_VGPU_SLOT_1=gvirtus-vgpu-1"],
        }


async def test_a_deleted_spec_is_back_within_the_bound(plugin_process: PluginProcess) -> None:
    original = plugin_process.cdi_spec.read_bytes()
    plugin_process.cdi_spec.unlink()
    with pytest.raises(UnresolvableCDIDevice):
        resolve(plugin_process.cdi_spec, ["gvirtus.io/vgpu=gvirtus-vgpu-0"])
    took = await wait_until(plugin_process.cdi_spec.exists)
    assert (took < RESTORE_BOUND_SECONDS, plugin_process.cdi_spec.read_bytes()) == (True, original)


async def test_a_tampered_spec_is_restored(plugin_process: PluginProcess) -> None:
    original = plugin_process.cdi_spec.read_bytes()
    # Changed in place (same inode): a device node added to every device, and one device less.
    spec = load_valid_spec(plugin_process.cdi_spec)
    for device in spec["devices"]:
        device["containerEdits"]["deviceNodes"] = [{"path": "/dev/mem"}]
    spec["devices"].pop()
    with plugin_process.cdi_spec.open("w") as handle:
        json.dump(spec, handle)
    took = await wait_until(lambda: plugin_process.cdi_spec.read_bytes() == original)
    assert took < RESTORE_BOUND_SECONDS
    async with httpx.AsyncClient(timeout=WAIT_SECONDS) as client:
        metrics = (await client.get(f"{plugin_process.health_url}/metrics")).text
    assert "gvirtus_device_plugin_cdi_spec_repairs_total 1.0" in metrics


async def test_a_removed_cdi_directory_is_created_again_with_the_spec(
    plugin_process: PluginProcess, cdi_dir: Path
) -> None:
    original = plugin_process.cdi_spec.read_bytes()
    plugin_process.cdi_spec.unlink()
    os.rmdir(cdi_dir)
    await wait_until(plugin_process.cdi_spec.exists)
    assert plugin_process.cdi_spec.read_bytes() == original
