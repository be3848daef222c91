"""Settings every service shares: the ``GVIRTUS_KAI_`` environment, usage text, clear errors.

Each service's ``Settings`` subclasses ``ServiceSettings`` (or ``HealthServerSettings``), and its
console script calls ``load_settings``: ``--help`` lists every setting with its variable and
default, and a bad value exits 2 with one line per variable to fix.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GVIRTUS_KAI_"
EXIT_BAD_SETTINGS = 2  # the same code argparse uses for a bad command line


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


# ``LOG_LEVEL=INFO`` is as good as ``info``.
LogLevel = Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)]


class ServiceSettings(BaseSettings):
    """The base of every service's settings: env prefix, read-only, the shared fields."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    log_level: LogLevel = Field("info", description="debug, info, warning or error")


class HealthServerSettings(ServiceSettings):
    """Services that serve ``/healthz``, ``/readyz`` and ``/metrics`` on their own port."""

    health_host: str = Field("0.0.0.0", description="address of /healthz, /readyz, /metrics")
    health_port: int = Field(8080, ge=0, le=65535, description="their port (0: any free port)")


S = TypeVar("S", bound=ServiceSettings)


def _show(value: Any) -> str:
    """A default as an operator would write it in the environment variable."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"  # 60, not 60.0
    if isinstance(value, str | int | PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return ",".join(f"{key}={item}" for key, item in value.items())
    if isinstance(value, BaseModel):
        return ":".join(_show(item) for item in value.model_dump().values())
    if isinstance(value, Sequence):
        return ",".join(_show(item) for item in value)
    return repr(value)


def settings_rows(cls: type[ServiceSettings]) -> list[tuple[str, str, str]]:
    """Every setting of ``cls`` as (variable without the prefix, default as written in the
    environment, description): what ``--help`` and the docs' settings tables both show."""
    shared = {name for base in cls.__mro__[1:] for name in getattr(base, "model_fields", {})}
    fields = cls.model_fields
    rows = []
    # The service's own settings first, then those every service has (log level, health port).
    for name in sorted(fields, key=lambda name: name in shared):
        default = fields[name].get_default(call_default_factory=True)
        rows.append((name.upper(), _show(default), fields[name].description or ""))
    return rows


def settings_usage(cls: type[ServiceSettings]) -> str:
    """Every setting of ``cls``: its environment variable, default and description."""
    rows = [
        (ENV_PREFIX + name, default or '""', text) for name, default, text in settings_rows(cls)
    ]
    width = max(len(variable) for variable, _, _ in rows)
    lines = ["settings (environment variable, default, meaning):"]
    for variable, default, description in rows:
        lines.append(f"  {variable:<{width}}  {default}")
        if description:
            lines.append(f"  {'':<{width}}    {description}")
    return "\n".join(lines)


def settings_table(cls: type[ServiceSettings]) -> str:
    """The settings of ``cls`` as a Markdown table, the rows ``--help`` lists."""
    lines = [
        f"| setting (`{ENV_PREFIX}…`) | default | meaning |",
        "|---|---|---|",
    ]
    for name, default, description in settings_rows(cls):
        shown = f"`{default}`" if default else "empty"
        meaning = description.replace("|", "\\|")  # a bar would end the cell
        lines.append(f"| `{name}` | {shown} | {meaning} |")
    return "\n".join(lines) + "\n"


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


def settings_or_exit(cls: type[S], program: str) -> S:
    """``cls()`` from the environment, or exit 2 printing one line per bad variable."""
    try:
        return cls()
    except ValidationError as error:
        lines = describe_settings_error(error)
        print(f"{program}: invalid settings:", *lines, sep="\n  ", file=sys.stderr)
        sys.exit(EXIT_BAD_SETTINGS)


def load_settings(
    cls: type[S],
    program: str,
    argv: Sequence[str] | None = None,
    *,
    description: str | None = None,
    parser: argparse.ArgumentParser | None = None,
    flags: argparse.Namespace | None = None,
) -> S:
    """Parse the command line, then read the settings; what every console script starts with.

    ``--help``/``-h`` prints usage listing every setting and exits 0; a bad setting exits 2.
    A program with flags of its own passes its ``parser``; the parsed flags land in ``flags``.
    """
    if parser is None:
        parser = argparse.ArgumentParser(prog=program, description=description)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = settings_usage(cls)
    parser.parse_args(argv, namespace=flags)
    return settings_or_exit(cls, program)
