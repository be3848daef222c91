"""The agent's answers from its readings of socket tables in a directory (PROC_NET), in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gvirtus_kai_backend_agent.agent import Agent, metrics_registry
from gvirtus_kai_backend_agent.gpu import Gpus
from prometheus_client import generate_latest

FIXTURES = Path(__file__).parent / "fixtures"


def agent_on(tables: Path, port: int = 9999) -> Agent:
    agent = Agent("backend-0", port, tables, Gpus(control_device=tables / "no-nvidiactl"))
    agent.read_tables()
    return agent


def answer(agent: Agent, path: str) -> tuple[str, dict[str, object]]:
    status, content_type, body = agent.routes()[path]()
    assert content_type == "application/json"
    return status, json.loads(body)


def test_load_is_the_contract_document_of_the_tables() -> None:
    status, load = answer(agent_on(FIXTURES / "dual"), "/load")

    assert status == "200 OK"
    assert load == {
        "pod": "backend-0",
        "listening": True,
        "port": 9999,
        "connections": 4,
        "clients": ["10.244.1.6", "127.0.0.1", "::1", "fd00:10:244:1::6"],
        "gpus": [],
        "gpuReadings": "none",
    }


def test_readyz_names_the_port_nothing_listens_on() -> None:
    status, body = answer(agent_on(FIXTURES / "ipv4", port=9998), "/readyz")

    assert status == "503 Service Unavailable"
    assert body == {"ready": False, "reason": "nothing listens on the GVirtuS port 9998"}


def test_tables_that_vanish_make_load_and_readyz_unavailable_until_they_are_back(
    tmp_path: Path,
) -> None:
    shutil.copytree(FIXTURES / "ipv4", tmp_path / "net")
    agent = agent_on(tmp_path / "net")
    (tmp_path / "net" / "tcp").rename(tmp_path / "tcp.away")
    agent.read_tables()
    gone = answer(agent, "/load"), answer(agent, "/readyz")
    (tmp_path / "tcp.away").rename(tmp_path / "net" / "tcp")
    agent.read_tables()
    back = answer(agent, "/load")

    assert [status for status, _ in gone] == ["503 Service Unavailable"] * 2
    assert "cannot read the socket tables" in str(gone[1][1]["reason"])
    assert back[0] == "200 OK"


def test_metrics_leave_out_the_connection_gauges_while_the_tables_cannot_be_read(
    tmp_path: Path,
) -> None:
    agent = agent_on(tmp_path)  # no tables at all
    text = generate_latest(metrics_registry(agent)).decode()

    assert "gvirtus_backend_connections{" not in text
    assert "# TYPE gvirtus_backend_gpu_utilization_ratio gauge" in text
