"""Kubernetes label syntax: which keys and values the API server accepts."""

from __future__ import annotations

import re

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_dns_subdomain(name: str) -> bool:
    """RFC 1123 subdomain as Kubernetes checks it: lower-case labels joined by dots, ≤ 253."""
    return 0 < len(name) <= 253 and all(
        len(part) <= 63 and _DNS_LABEL.match(part) for part in name.split(".")
    )


def label_key_problem(key: str) -> str | None:
    """Why the API server would reject ``key`` as a label key, or None when it is valid."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return "the prefix before '/' is empty"
        if len(prefix) > 253:
            return "the prefix is longer than 253 characters"
        if not is_dns_subdomain(prefix):
            return f"the prefix {prefix!r} is not a lower-case DNS subdomain"
    if not name:
        return "the name is empty"
    if len(name) > 63:
        return "the name is longer than 63 characters"
    if not _NAME.match(name):
        return (
            f"the name {name!r} must be alphanumeric, '-', '_' or '.', "
            "starting and ending with an alphanumeric character"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why the API server would reject ``value`` as a label value, or None (empty is valid)."""
    if len(value) > 63:
        return "the value is longer than 63 characters"
    if value and not _NAME.match(value):
        return (
            f"the value {value!r} must be alphanumeric, '-', '_' or '.', "
            "starting and ending with an alphanumeric character"
        )
    return None
