"""Label and field selectors, parsed as the Kubernetes API server does (what controllers use)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_TERM = re.compile(rf"^({_KEY})\s+(in|notin)\s*\(([^)]*)\)$")
_EQUALITY_TERM = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_EXISTS_TERM = re.compile(rf"^({_KEY})$")
_NOT_EXISTS_TERM = re.compile(rf"^!\s*({_KEY})$")

# Field selectors the real server supports for every resource; others are per-resource and
# rejected there with the same 400 this fake returns.
SUPPORTED_FIELDS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "metadata.name": lambda obj: str(obj.get("metadata", {}).get("name", "")),
    "metadata.namespace": lambda obj: str(obj.get("metadata", {}).get("namespace") or ""),
}


class SelectorError(ValueError):
    """The selector text is malformed or uses an unsupported field (HTTP 400 from the server)."""


@dataclass(frozen=True)
class _Requirement:
    key: str
    operator: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "exists":
            return self.key in labels
        if self.operator == "!exists":
            return self.key not in labels
        if self.operator == "in":
            return labels.get(self.key) in self.values
        # "notin" and "!=" also match objects without the key, as in Kubernetes.
        return labels.get(self.key) not in self.values


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses: ``a in (x,y),b`` has two terms."""
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    terms.append(current.strip())
    return [term for term in terms if term]


class LabelSelector:
    def __init__(self, text: str) -> None:
        self.text = text
        self._requirements = [self._parse(term) for term in _split_terms(text)]

    @staticmethod
    def _parse(term: str) -> _Requirement:
        if match := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in match[3].split(",") if v.strip())
            return _Requirement(match[1], match[2], values)
        if match := _EQUALITY_TERM.match(term):
            operator = "notin" if match[2] == "!=" else "in"
            return _Requirement(match[1], operator, frozenset({match[3]}))
        if match := _NOT_EXISTS_TERM.match(term):
            return _Requirement(match[1], "!exists")
        if match := _EXISTS_TERM.match(term):
            return _Requirement(match[1], "exists")
        raise SelectorError(f"unable to parse requirement: {term!r}")

    def matches(self, obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(requirement.matches(labels) for requirement in self._requirements)


class FieldSelector:
    def __init__(self, text: str) -> None:
        self.text = text
        self._terms: list[tuple[str, bool, str]] = []
        for term in _split_terms(text):
            match = re.match(r"^([A-Za-z.]+)\s*(==|=|!=)\s*(.*)$", term)
            if match is None:
                raise SelectorError(f"invalid selector: {term!r}; can't understand {term!r}")
            field, operator, value = match[1], match[2], match[3]
            if field not in SUPPORTED_FIELDS:
                raise SelectorError(f'field label not supported: "{field}"')
            self._terms.append((field, operator != "!=", value))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(
            (SUPPORTED_FIELDS[field](obj) == value) == equal for field, equal, value in self._terms
        )
