"""Settings conventions shared by the services."""

from __future__ import annotations

import pytest
from gvirtus_kai_common.settings import ENV_PREFIX, LogLevel, describe_settings_error
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
