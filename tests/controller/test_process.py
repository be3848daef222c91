"""The ``gvirtus-controller`` console script as a process: settings, health, metrics, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import httpx
from lightkube import AsyncClient
from lightkube.resources.coordination_v1 import Lease

from tests.controller.conftest import Scene
from tests.controller.kube import (
    Ready,
    assigned,
    backend_slice,
    eventually,
    gated_pod,
    owner_reference,
    pod_gone,
    told,
)

CONTROLLER = str(Path(sys.executable).parent / "gvirtus-controller")
WAIT = 30.0


def environment(scene: Scene | None, kubeconfig: Path | str, **settings: str) -> dict[str, str]:
    """The caller's environment without any GVIRTUS_KAI_*, plus the scene's and ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    env.update(KUBECONFIG=str(kubeconfig), GVIRTUS_KAI_HEALTH_HOST="127.0.0.1")
    env.update(GVIRTUS_KAI_HEALTH_PORT="0")
    if scene is not None:
        env.update(
            GVIRTUS_KAI_NAMESPACE=scene.release,
            GVIRTUS_KAI_ENABLE_LABEL=scene.enable_label,
            GVIRTUS_KAI_PLUGINS="cudart",
        )
    env.update({f"GVIRTUS_KAI_{name.upper()}": value for name, value in settings.items()})
    return env


async def run_to_exit(env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        CONTROLLER, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(WAIT):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()


async def test_a_bad_setting_exits_2_naming_the_variable(kubeconfig: Path) -> None:
    code, output = await run_to_exit(environment(None, kubeconfig, policy="closest"))

    assert code == 2
    assert "GVIRTUS_KAI_POLICY" in output


async def test_no_kubernetes_configuration_exits_2_saying_so(tmp_path: Path) -> None:
    env = environment(None, tmp_path / "missing-kubeconfig")
    env.pop("KUBERNETES_SERVICE_HOST", None)

    code, output = await run_to_exit(env)

    assert code == 2
    assert "no Kubernetes API configuration" in output


async def test_the_process_assigns_reports_and_gives_up_its_lease_on_sigterm(
    client: AsyncClient, scene: Scene, kubeconfig: Path
) -> None:
    await client.create(backend_slice(scene, "s1", [Ready("10.2.0.1")]))
    env = environment(scene, kubeconfig, leader_election="true", pod_name="controller-0")
    process = await asyncio.create_subprocess_exec(
        CONTROLLER, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        port = await _health_port(process)
        await client.create(gated_pod(scene, "p"))
        assert await assigned(client, scene, "p") == "10.2.0.1:9999"

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200
            metrics = (await http.get("/metrics")).text
        assert "gvirtus_controller_assignments_total 1.0" in metrics
        assert 'gvirtus_controller_backend_pods{backend="10.2.0.1:9999"} 1.0' in metrics
        assert "gvirtus_controller_leading 1.0" in metrics

        process.terminate()
        async with asyncio.timeout(WAIT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lease = await client.get(Lease, "gvirtus-controller", namespace=scene.release)
    assert lease.spec is not None
    assert lease.spec.holderIdentity is None


async def _health_port(process: asyncio.subprocess.Process) -> int:
    """Read the JSON log until the health server says where it listens."""
    assert process.stderr is not None
    async with asyncio.timeout(WAIT):
        async for line in process.stderr:
            if line.startswith(b"{"):
                entry = json.loads(line)
                if entry["msg"] == "health server listening":
                    return int(entry["port"])
    raise AssertionError("the controller exited before its health server listened")


# The controller's console script with a wall clock that jumps an hour ahead on SIGUSR1, as an
# NTP step does; patched before the controller is imported, so nothing holds the real one.
STEPPING_WALL_CLOCK = """
import signal, sys, time
step = [0.0]
wall = time.time
time.time = lambda: wall() + step[0]
signal.signal(signal.SIGUSR1, lambda *_: step.__setitem__(0, step[0] + 3600.0))
from gvirtus_kai_controller.main import main
sys.exit(main())
"""


async def test_a_wall_clock_step_does_not_cut_the_eviction_grace_short(
    client: AsyncClient, scene: Scene, kubeconfig: Path
) -> None:
    reference = await owner_reference(client, scene)
    await client.create(backend_slice(scene, "s1", [Ready("10.2.1.1")]))
    env = environment(scene, kubeconfig, on_backend_loss="evict", backend_loss_grace_seconds="6")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STEPPING_WALL_CLOCK, env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await _health_port(process)
        await client.create(gated_pod(scene, "owned", owner=reference))
        await assigned(client, scene, "owned")
        await client.replace(backend_slice(scene, "s1", [Ready("10.2.1.1", ready=False)]))
        await told(client, scene, "owned", "BackendLost")

        process.send_signal(signal.SIGUSR1)
        await asyncio.sleep(3.0)  # the reconciler checks the deadlines every second

        assert not await pod_gone(client, scene, "owned")
        await eventually(lambda: pod_gone(client, scene, "owned"), "evicted after the grace")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
