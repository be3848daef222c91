"""Settings conventions shared by the services."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gvirtus_kai_common.settings import (
    ENV_PREFIX,
    LogLevel,
    ServiceSettings,
    describe_settings_error,
    load_settings,
)
from pydantic import BaseModel, Field, ValidationError


class _Example(BaseModel):
    log_level: LogLevel = "info"
    device_count: int = Field(16, ge=1)


def test_log_level_is_case_insensitive() -> None:
    assert _Example(log_level="WARNING").log_level == "warning"


def test_an_unknown_log_level_is_rejected() -> None:
    with pytest.raises(ValidationError):
        _Example(log_level="chatty")


def test_each_error_names_the_environment_variable_and_the_value() -> None:
    with pytest.raises(ValidationError) as raised:
        _Example(log_level="chatty", device_count=0)
    lines = describe_settings_error(raised.value)
    assert len(lines) == 2
    assert lines[0].startswith(f"{ENV_PREFIX}LOG_LEVEL: ")
    assert lines[0].endswith("(got 'chatty')")
    assert (
        lines[1] == f"{ENV_PREFIX}DEVICE_COUNT: Input should be greater than or equal to 1 (got 0)"
    )


def test_a_huge_bad_value_is_shortened_in_the_message() -> None:
    with pytest.raises(ValidationError) as raised:
        _Example(log_level="x" * 10_000)
    [line] = describe_settings_error(raised.value)
    assert len(line) < 300
    assert line.endswith("...)")


# --- load_settings: what every console script starts with ------------------------------------


class _ServiceSettings(ServiceSettings):
    device_count: int = Field(16, ge=1, description="slots on the node")
    labels: dict[str, str] = Field(default_factory=lambda: {"a/b": "true"})


def test_help_lists_every_setting_with_its_variable_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings(_ServiceSettings, "gvirtus-example", ["--help"])
    usage = capsys.readouterr().out
    assert exited.value.code == 0
    assert usage.startswith("usage: gvirtus-example")
    assert re.search(r"GVIRTUS_KAI_DEVICE_COUNT +16\n +slots on the node", usage)
    assert re.search(r"GVIRTUS_KAI_LOG_LEVEL +info", usage)
    assert re.search(r"GVIRTUS_KAI_LABELS +a/b=true", usage)


def test_bad_settings_exit_2_with_one_line_per_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_DEVICE_COUNT", "0")
    monkeypatch.setenv("GVIRTUS_KAI_LOG_LEVEL", "chatty")
    with pytest.raises(SystemExit) as exited:
        load_settings(_ServiceSettings, "gvirtus-example", [])
    lines = capsys.readouterr().err.splitlines()
    assert exited.value.code == 2
    assert lines[0] == "gvirtus-example: invalid settings:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "GVIRTUS_KAI_LOG_LEVEL",
        "GVIRTUS_KAI_DEVICE_COUNT",
    ]


def test_good_settings_are_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_DEVICE_COUNT", "3")
    assert load_settings(_ServiceSettings, "gvirtus-example", []).device_count == 3


def test_a_program_with_flags_gets_them_parsed() -> None:
    parser = argparse.ArgumentParser(prog="gvirtus-example")
    parser.add_argument("--once", action="store_true")
    flags = argparse.Namespace()
    load_settings(_ServiceSettings, "gvirtus-example", ["--once"], parser=parser, flags=flags)
    assert flags.once is True


SCRIPTS = [
    ("gvirtus-webhook", [], "GVIRTUS_KAI_TLS_CERT_FILE"),
    ("gvirtus-labeler", [], "GVIRTUS_KAI_NODE_NAME"),
    ("gvirtus-device-plugin", [], "GVIRTUS_KAI_DEVICE_COUNT"),
    ("gvirtus-controller", [], "GVIRTUS_KAI_BACKEND_SERVICE"),
    ("gvirtus-kai", ["inject"], "GVIRTUS_KAI_BACKEND_HOST"),
]


@pytest.mark.parametrize(("script", "command", "variable"), SCRIPTS)
def test_every_console_script_prints_usage_for_help(
    script: str, command: list[str], variable: str
) -> None:
    # No settings and no certificate: --help must not try to start anything.
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    done = subprocess.run(
        [str(Path(sys.executable).with_name(script)), *command, "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert variable in done.stdout
    assert "GVIRTUS_KAI_LOG_LEVEL" in done.stdout


@pytest.mark.parametrize(("script", "command", "variable"), SCRIPTS)
def test_every_console_script_exits_2_naming_a_bad_log_level(
    script: str, command: list[str], variable: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env[f"{ENV_PREFIX}LOG_LEVEL"] = "chatty"
    arguments = ["-f", "-"] if command else []
    done = subprocess.run(
        [str(Path(sys.executable).with_name(script)), *command, *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        input="",
    )
    assert done.returncode == 2
    assert f"{ENV_PREFIX}LOG_LEVEL: " in done.stderr
    assert "Traceback" not in done.stderr
