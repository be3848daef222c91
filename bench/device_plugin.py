"""Device plugin figures next to their targets (``make bench``).

Runs the real ``gvirtus-device-plugin`` process against the kubelet emulator of the tests, in this
process. Each of the kubelet restarts does what a restarting kubelet does to the plugin directory:
stop serving and remove ``kubelet.sock``, remove the plugins' sockets, then create a fresh
``kubelet.sock``. The figure is the time from the new ``kubelet.sock`` listening to the plugin's
Register call arriving. The CDI spec is deleted while each kubelet is down and must be on disk
again when the next registration arrives; then it is deleted at random moments while the plugin
runs and the time until it is back is measured. Idle RSS is read after the plugin has sat
registered for a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import exit_status, info, resident_parts, row  # noqa: E402
from tests.device_plugin.kubelet import KubeletEmulator  # noqa: E402

COMMAND = str(Path(sys.executable).parent / "gvirtus-device-plugin")
TARGET_REREGISTER_S = 1.0
TARGET_RSS_MIB = 64.0
# The plugin checks the spec every second; a deletion is repaired at the next check.
TARGET_CDI_RESTORE_S = 2.0
CDI_DELETIONS = 10
IDLE_SECONDS = 3.0
DEVICE_COUNT = 16


def count_not_json(lines: list[str]) -> int:
    count = 0
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            count += 1
    return count


def remove_plugin_sockets(plugin_dir: Path) -> None:
    """What the kubelet's device manager does when it starts."""
    for leftover in plugin_dir.glob("*.sock"):
        leftover.unlink(missing_ok=True)


async def restart_kubelet(
    old: KubeletEmulator, plugin_dir: Path, cdi_spec: Path
) -> tuple[KubeletEmulator, float]:
    await old.stop()
    remove_plugin_sockets(plugin_dir)
    os.unlink(cdi_spec)  # must be written again before the plugin registers
    await asyncio.sleep(0.05)  # the gap while a real kubelet starts up
    fresh = KubeletEmulator(plugin_dir, cdi_spec=cdi_spec)
    await fresh.start()
    await fresh.wait_for_registrations(1)
    return fresh, fresh.registrations[0].received_at - fresh.socket_created_at


def time_to_restore(cdi_spec: Path) -> float:
    """Delete the spec at a random moment of the plugin's check period; seconds until it is back."""
    time.sleep(random.uniform(0.0, 1.0))
    cdi_spec.unlink()
    deleted = time.monotonic()
    while not cdi_spec.exists():
        time.sleep(0.005)
    return time.monotonic() - deleted


async def bench(restarts: int) -> list[str]:
    work = Path(tempfile.mkdtemp(dir="/tmp", prefix="gdp-bench-"))  # short: unix socket paths
    plugin_dir, cdi_dir = work / "plugins", work / "cdi"
    plugin_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    env.update(
        GVIRTUS_KAI_PLUGIN_DIR=str(plugin_dir),
        GVIRTUS_KAI_CDI_DIR=str(cdi_dir),
        GVIRTUS_KAI_DEVICE_COUNT=str(DEVICE_COUNT),
        GVIRTUS_KAI_HEALTH_HOST="127.0.0.1",
        GVIRTUS_KAI_HEALTH_PORT="0",
        GVIRTUS_KAI_LOG_LEVEL="warning",
    )
    cdi_spec = cdi_dir / "gvirtus.io-vgpu.json"
    kubelet = KubeletEmulator(plugin_dir, cdi_spec=cdi_spec)
    await kubelet.start()
    started = time.monotonic()
    log_path = work / "plugin.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(COMMAND, env=env, stderr=log_file)
    try:
        await kubelet.wait_for_registrations(1)
        first_registration = time.monotonic() - started
        delays = []
        registered_without_spec = 0
        for _ in range(restarts):
            kubelet, delay = await restart_kubelet(kubelet, plugin_dir, cdi_spec)
            delays.append(delay)
            registered_without_spec += kubelet.registrations[0].cdi_spec is None
        restores = [
            await asyncio.to_thread(time_to_restore, cdi_spec) for _ in range(CDI_DELETIONS)
        ]
        await asyncio.sleep(IDLE_SECONDS)
        memory = psutil.Process(process.pid).memory_full_info()
        parts = resident_parts(process.pid)
    finally:
        process.terminate()
        await process.wait()
        await kubelet.stop()
        not_json = count_not_json(log_path.read_text().splitlines())
        shutil.rmtree(work, ignore_errors=True)
    return [
        f"device plugin, {DEVICE_COUNT} devices, {restarts} kubelet restarts:",
        row("process start to first registration", first_registration, "s"),
        row("re-registration after restart, median", statistics.median(delays), "s",
            TARGET_REREGISTER_S),
        row("re-registration after restart, worst", max(delays), "s", TARGET_REREGISTER_S),
        row("registrations without the CDI spec on disk", registered_without_spec, "", 0),
        row("CDI spec back after deletion, median", statistics.median(restores), "s"),
        row(f"CDI spec back after deletion, worst of {CDI_DELETIONS}", max(restores), "s",
            TARGET_CDI_RESTORE_S),
        row("idle RSS", memory.rss / 2**20, "MiB", TARGET_RSS_MIB),
        row("idle USS (not shared with other processes)", memory.uss / 2**20, "MiB"),
        info("idle RSS anonymous / file-backed", parts),
        row("stderr lines that are not JSON", not_json, "", 0),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--restarts", type=int, default=20, help="kubelet restarts to measure")
    args = parser.parse_args()
    rows = asyncio.run(bench(args.restarts))
    print("\n".join(rows), flush=True)
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
