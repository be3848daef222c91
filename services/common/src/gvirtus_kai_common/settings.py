"""Conventions every service's settings class shares: the env prefix, log levels, clear errors."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, ValidationError

ENV_PREFIX = "GVIRTUS_KAI_"


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


# ``LOG_LEVEL=INFO`` is as good as ``info``.
LogLevel = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)]


def describe_settings_error(error: ValidationError) -> list[str]:
    """One line per bad setting, naming the environment variable an operator has to fix."""
    lines = []
    for item in error.errors(include_url=False):
        variable = ENV_PREFIX + (str(item["loc"][0]).upper() if item["loc"] else "?")
        message = item["msg"].removeprefix("Value error, ")
        got = repr(item.get("input"))
        got = got if len(got) <= 80 else got[:77] + "..."
        lines.append(f"{variable}: {message} (got {got})")
    return lines
