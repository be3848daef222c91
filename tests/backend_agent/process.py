"""The real ``gvirtus-backend-agent`` process on 127.0.0.1, reading this machine's socket tables."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMMAND = str(Path(sys.executable).parent / "gvirtus-backend-agent")
WAIT_SECONDS = 20.0
# The tests' agents read the tables ten times a second; a change shows within a few readings.
INTERVAL_SECONDS = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agent_environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    env.update({f"GVIRTUS_KAI_{name.upper()}": value for name, value in settings.items()})
    return env


@dataclass
class AgentProcess:
    process: subprocess.Popen[str]
    port: int

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return int(answer.status), answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def load(self) -> dict[str, Any]:
        status, body = self.get("/load")
        assert status == 200, body
        document: dict[str, Any] = json.loads(body)
        return document

    def load_once(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first ``/load`` that passes ``check`` (a reading later), or the last one seen
        once ``WAIT_SECONDS`` have passed, for the test's assertion to show."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not check(load := self.load()) and time.monotonic() < deadline:
            time.sleep(INTERVAL_SECONDS / 2)
        return load

    def stop(self) -> str:
        """SIGTERM, then the log it wrote."""
        if self.process.poll() is None:
            self.process.terminate()
        _, stderr = self.process.communicate(timeout=10)
        return stderr


@contextmanager
def running_agent(gvirtus_port: int, **settings: str) -> Iterator[AgentProcess]:
    port = free_port()
    env = agent_environment(
        health_host="127.0.0.1",
        health_port=str(port),
        gvirtus_port=str(gvirtus_port),
        pod_name="gvirtus-backend-test",
        sample_interval_seconds=str(INTERVAL_SECONDS),
        **settings,
    )
    process = subprocess.Popen(
        [COMMAND], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    agent = AgentProcess(process, port)
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the agent exited: {process.stderr.read() if process.stderr else ''}"
                )
            try:
                if agent.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the agent did not answer /healthz")
            time.sleep(0.05)
        yield agent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
