"""The ``gvirtus-labeler`` console script as a process: exit codes, JSON logs, health, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.faultproxy import FaultProxy
from tests.labeler.support import BACKEND, DEFAULTS, FRONTEND, WAIT, Nodes

LABELER = str(Path(sys.executable).parent / "gvirtus-labeler")


def environment(kubeconfig: Path | str, **settings: str) -> dict[str, str]:
    """The process environment: the caller's, minus any GVIRTUS_KAI_* it had, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    env.update(
        KUBECONFIG=str(kubeconfig),
        GVIRTUS_KAI_HEALTH_HOST="127.0.0.1",
        GVIRTUS_KAI_HEALTH_PORT="0",
    )
    env.update({f"GVIRTUS_KAI_{name.upper()}": value for name, value in settings.items()})
    return env


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def run(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run to completion; the exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        LABELER, *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(WAIT * 3):
        _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


class LabelerProcess:
    """A long-running labeler whose JSON log lines are collected as they arrive."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.logs: list[dict[str, Any]] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            if line.startswith(b"{"):
                self.logs.append(json.loads(line))
                self._new_line.set()

    async def log(self, message: str) -> dict[str, Any]:
        """The first log line with this message, waiting for it."""
        async with asyncio.timeout(WAIT):
            while True:
                for entry in self.logs:
                    if entry["msg"] == message:
                        return entry
                self._new_line.clear()
                await self._new_line.wait()

    async def exit_code(self) -> int:
        async with asyncio.timeout(WAIT):
            code = await self.process.wait()
            await self._reader
        return code


@contextlib.asynccontextmanager
async def started(*args: str, env: dict[str, str]) -> AsyncIterator[LabelerProcess]:
    process = await asyncio.create_subprocess_exec(
        LABELER, *args, env=env, stderr=asyncio.subprocess.PIPE
    )
    labeler = LabelerProcess(process)
    try:
        yield labeler
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- --once -------------------------------------------------------------------------------------


async def test_once_labels_its_node_logs_each_label_and_exits_zero(
    nodes: Nodes, kubeconfig: Path
) -> None:
    await nodes.add("n1", {BACKEND: "true"})
    n1 = nodes.name("n1")

    code, stderr = await run("--once", env=environment(kubeconfig, node_name=n1))

    assert code == 0
    assert await nodes.labels("n1") == {BACKEND: "true", FRONTEND: "true"}
    added = [e for e in json_lines(stderr) if e["msg"] == "label added"]
    assert [(e["node"], e["key"], e["value"]) for e in added] == [(n1, FRONTEND, "true")]


async def test_once_with_all_nodes_labels_every_node(nodes: Nodes, kubeconfig: Path) -> None:
    for name in ("a", "b", "c"):
        await nodes.add(name)

    code, _ = await run("--once", "--all-nodes", env=environment(kubeconfig))

    assert code == 0
    assert [await nodes.labels(name) for name in ("a", "b", "c")] == [DEFAULTS] * 3


async def test_once_on_a_node_that_does_not_exist_fails_naming_it(
    nodes: Nodes, kubeconfig: Path
) -> None:
    ghost = nodes.name("ghost")

    code, stderr = await run("--once", env=environment(kubeconfig, node_name=ghost))

    assert code == 1
    [error] = [e for e in json_lines(stderr) if e["level"] == "error"]
    assert error["msg"] == f"could not label: node '{ghost}' not found"


async def test_once_with_the_api_unreachable_fails_after_retrying(
    kube_api: FaultProxy, kubeconfig: Path
) -> None:
    await kube_api.stop()

    code, stderr = await run("--once", env=environment(kubeconfig, node_name="n1"))

    assert code == 1
    logs = json_lines(stderr)
    retries = [e for e in logs if e["msg"] == "kubernetes API call failed; retrying"]
    assert len(retries) == 4
    assert logs[-1]["msg"].startswith("could not label node n1: list: no answer")


# -- bad settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "named"),
    [
        ("gvirtus.io/frontend.allowed", "'gvirtus.io/frontend.allowed': expected key=value"),
        ("a=1,a=2", "'a=2': duplicate key 'a'"),
        ("Bad_Prefix/x=1", "'Bad_Prefix/x=1': invalid key"),
        ("x=not ok", "'x=not ok': invalid value"),
    ],
)
async def test_malformed_labels_exit_2_naming_the_entry(
    kubeconfig: Path, labels: str, named: str
) -> None:
    code, stderr = await run(env=environment(kubeconfig, node_name="n1", labels=labels))

    assert code == 2
    assert "GVIRTUS_KAI_LABELS" in stderr
    assert named in stderr


async def test_a_missing_node_name_exits_2_in_per_node_mode(kubeconfig: Path) -> None:
    code, stderr = await run(env=environment(kubeconfig))

    assert code == 2
    assert "GVIRTUS_KAI_NODE_NAME is empty" in stderr


async def test_a_malformed_health_port_exits_2_naming_it(kubeconfig: Path) -> None:
    code, stderr = await run(env=environment(kubeconfig, node_name="n1", health_port="http"))

    assert code == 2
    assert "GVIRTUS_KAI_HEALTH_PORT" in stderr


async def test_no_usable_kube_config_exits_2(tmp_path: Path) -> None:
    env = environment(tmp_path / "missing-kubeconfig", node_name="n1")
    env["HOME"] = str(tmp_path)  # no ~/.kube/config to fall back on either

    code, stderr = await run(env=env)

    assert code == 2
    assert "no Kubernetes API configuration" in stderr


async def test_a_health_port_already_in_use_fails_naming_the_port(
    nodes: Nodes, kubeconfig: Path
) -> None:
    await nodes.add("n1")
    n1 = nodes.name("n1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])

        code, stderr = await run(env=environment(kubeconfig, node_name=n1, health_port=port))

    assert code == 1
    [error] = [e for e in json_lines(stderr) if e["level"] == "error"]
    message = "cannot serve /healthz, /readyz and /metrics"
    assert (error["msg"], str(error["port"])) == (message, port)


# -- long-running ---------------------------------------------------------------------------------


async def test_healthz_and_metrics_are_served_over_http(
    kube_api: FaultProxy, nodes: Nodes, kubeconfig: Path
) -> None:
    await nodes.add("n1")

    async with started(env=environment(kubeconfig, node_name=nodes.name("n1"))) as labeler:
        port = (await labeler.log("health server listening"))["port"]
        await kube_api.wait_until(lambda: kube_api.open_watches == 1, within=WAIT)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            health = await http.get("/healthz")
            metrics = (await http.get("/metrics")).text

    assert health.status_code == 200
    assert f'gvirtus_labeler_labels_added_total{{key="{FRONTEND}"}} 1.0' in metrics
    assert "gvirtus_labeler_conflicts_total 0.0" in metrics


async def test_sigterm_stops_the_labeler_cleanly(
    kube_api: FaultProxy, nodes: Nodes, kubeconfig: Path
) -> None:
    await nodes.add("n1")

    async with started(env=environment(kubeconfig, node_name=nodes.name("n1"))) as labeler:
        await kube_api.wait_until(lambda: kube_api.open_watches == 1, within=WAIT)
        labeler.process.send_signal(signal.SIGTERM)
        code = await labeler.exit_code()

    assert code == 0
    assert labeler.logs[-1]["msg"] == "stopped"
    assert not [e for e in labeler.logs if e["level"] == "error"]


async def test_the_process_keeps_retrying_while_the_api_is_down(
    kube_api: FaultProxy, nodes: Nodes, kubeconfig: Path
) -> None:
    await nodes.add("n1")
    await kube_api.stop()

    async with started(env=environment(kubeconfig, node_name=nodes.name("n1"))) as labeler:
        await labeler.log("kubernetes API call failed; retrying")
        await kube_api.start()
        await nodes.has_labels("n1", DEFAULTS)

        assert labeler.process.returncode is None
