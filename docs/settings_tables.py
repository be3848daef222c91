"""Write the services' settings tables into docs/configuration.md from their ``Settings`` classes.

Each table sits between ``<!-- settings: <module> -->`` and ``<!-- end settings -->``; everything
between the markers is replaced by the rows ``--help`` prints (``make docs``). ``--check`` changes
nothing and exits 1 when the file differs from what it would write.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

from gvirtus_kai_common.settings import ServiceSettings, settings_table

CONFIGURATION = Path(__file__).resolve().parent / "configuration.md"
SECTION = re.compile(
    r"(?P<start><!-- settings: (?P<module>[\w.]+) -->\n)(?P<table>.*?)"
    r"(?P<end><!-- end settings -->)",
    re.DOTALL,
)


def settings_class(module: str) -> type[ServiceSettings]:
    found = getattr(importlib.import_module(module), "Settings", None)
    if not (isinstance(found, type) and issubclass(found, ServiceSettings)):
        raise SystemExit(f"{module} has no Settings class")
    return found


def generated(
    text: str, settings_of: Callable[[str], type[ServiceSettings]] = settings_class
) -> str:
    """``text`` with every marked table written from its module's ``Settings``."""
    return SECTION.sub(
        lambda m: m["start"] + settings_table(settings_of(m["module"])) + m["end"], text
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1)")
    args = parser.parse_args(argv)
    text = CONFIGURATION.read_text(encoding="utf-8")
    if not SECTION.search(text):
        print(f"{CONFIGURATION.name}: no settings markers found", file=sys.stderr)
        return 1
    new = generated(text)
    if args.check:
        if new != text:
            print(f"{CONFIGURATION.name} is out of date: run make docs", file=sys.stderr)
            return 1
        return 0
    if new != text:
        CONFIGURATION.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
