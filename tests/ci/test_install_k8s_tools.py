"""ci/install_k8s_tools.py refuses hosts its linux/amd64 binaries cannot run on, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scriptmodule import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "ci" / "install_k8s_tools.py"


TOOLS = load_script(SCRIPT, "install_k8s_tools")


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_linux_amd64_hosts_are_accepted(machine: str) -> None:
    assert TOOLS.platform_problem("Linux", machine) is None


@pytest.mark.parametrize(
    ("system", "machine"), [("Linux", "aarch64"), ("Darwin", "arm64"), ("Darwin", "x86_64")]
)
def test_other_hosts_are_refused_naming_the_host_and_the_way_out(system: str, machine: str) -> None:
    problem = TOOLS.platform_problem(system, machine)
    assert problem is not None
    assert f"{system}/{machine}" in problem
    assert ".tools/bin/" in problem
