"""The chart README's values table, generated from the `# --` comments of values.yaml.

A `# -- text` comment (continued by further `#` lines) documents the key on the next line; a
documented map is one row whose default is the whole map. Run as a script to rewrite the table:
``python -m tests.chart.values_table``; tests/chart/test_values_contract.py keeps it current.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "gvirtus-kai"
BEGIN = "<!-- values-table:begin (generated from values.yaml, do not edit) -->"
END = "<!-- values-table:end -->"

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_.-]*):(?:\s|$)")
_DOC_START = re.compile(r"^ *# -- ?(?P<text>.*)$")
_DOC_MORE = re.compile(r"^ *#(?: (?P<text>.*))?$")


@dataclass(frozen=True)
class ValueDoc:
    path: tuple[str, ...]
    description: str
    default: Any

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def type_name(self) -> str:
        match self.default:
            case bool():
                return "bool"
            case int():
                return "int"
            case float():
                return "float"
            case str():
                return "string"
            case list():
                return "list"
            case _:
                return "object"


def lookup(values: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        values = values[part]
    return values


def parse(text: str) -> list[ValueDoc]:
    """Documented keys of a values file, in file order."""
    values = yaml.safe_load(text)
    docs: list[ValueDoc] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    pending: list[str] | None = None
    for line in text.splitlines():
        if start := _DOC_START.match(line):
            pending = [start["text"].strip()]
            continue
        if pending is not None and (more := _DOC_MORE.match(line)):
            pending.append((more["text"] or "").strip())
            continue
        key_line = _KEY_LINE.match(line)
        if not key_line:
            pending = None  # blank lines, list items and plain comments end a doc block
            continue
        indent = len(key_line["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = tuple(k for _, k in stack)
        if not isinstance(lookup(values, parent), dict):
            pending = None  # a key inside a list item, not a chart value
            continue
        path = (*parent, key_line["key"])
        stack.append((indent, key_line["key"]))
        if pending is not None:
            docs.append(ValueDoc(path, " ".join(p for p in pending if p), lookup(values, path)))
            pending = None
    return docs


def leaf_paths(values: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of scalars, lists and empty maps: the values a user can set."""
    if isinstance(values, dict) and values:
        return [p for k, v in values.items() for p in leaf_paths(v, (*prefix, k))]
    return [prefix]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(docs: list[ValueDoc]) -> str:
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for doc in docs:
        default = json.dumps(doc.default, separators=(",", ":"))
        rows.append(
            f"| `{doc.key}` | {doc.type_name} | `{_cell(default)}` | {_cell(doc.description)} |"
        )
    return "\n".join(rows)


def expected_readme(readme: str, values_text: str) -> str:
    """The README with its values table regenerated from ``values_text``."""
    head, begin, rest = readme.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"README lacks the {BEGIN!r} ... {END!r} markers")
    return f"{head}{BEGIN}\n{table(parse(values_text))}\n{END}{tail}"


def main() -> int:
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    updated = expected_readme(readme, (CHART / "values.yaml").read_text())
    if updated != readme:
        readme_path.write_text(updated)
        print(f"rewrote the values table of {readme_path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
