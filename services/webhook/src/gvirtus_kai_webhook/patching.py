"""A small RFC 6902 JSON Patch applier for the operations the mutation produces.

The injector CLI applies patches itself so the runtime needs no JSON Patch library. Supported:
``add``, ``replace`` and ``remove`` (all the mutation emits), with RFC 6901 pointers (``~0``,
``~1``) and ``-`` for appending to an array.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from gvirtus_kai_webhook.models import JsonPatchOperation


class PatchError(Exception):
    """The patch does not apply to the document (missing path, bad index)."""


def apply_patch(document: Any, operations: Iterable[JsonPatchOperation]) -> Any:
    """Apply ``operations`` to ``document`` in place and return the result.

    The result is a new object only when an operation replaces the whole document (path "").
    On ``PatchError`` the document may be partly changed: apply to a copy when that matters.
    """
    for operation in operations:
        tokens = parse_pointer(operation.path)
        if not tokens:  # the whole document
            if operation.op == "remove":
                raise PatchError("cannot remove the whole document")
            document = copy.deepcopy(operation.value)
            continue
        parent = _resolve(document, tokens[:-1], operation.path)
        key = tokens[-1]
        if operation.op == "add":
            _add(parent, key, copy.deepcopy(operation.value), operation.path)
        elif operation.op == "replace":
            _check_exists(parent, key, operation.path)
            parent[_slot(parent, key, operation.path)] = copy.deepcopy(operation.value)
        else:  # remove
            _check_exists(parent, key, operation.path)
            del parent[_slot(parent, key, operation.path)]
    return document


def parse_pointer(pointer: str) -> list[str]:
    """RFC 6901 pointer to raw tokens: ``/a~1b/~0c`` is ``["a/b", "~c"]``."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"JSON pointer {pointer!r} must start with '/'")
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def _resolve(document: Any, tokens: list[str], pointer: str) -> Any:
    node = document
    for token in tokens:
        _check_exists(node, token, pointer)
        node = node[_slot(node, token, pointer)]
    return node


def _check_exists(node: Any, token: str, pointer: str) -> None:
    if isinstance(node, dict):
        if token not in node:
            raise PatchError(f"{pointer!r}: no member {token!r}")
    elif isinstance(node, list):
        if _index(token, pointer) >= len(node):
            raise PatchError(f"{pointer!r}: index {token} is past the end ({len(node)} items)")
    else:
        raise PatchError(f"{pointer!r}: {token!r} is inside a {type(node).__name__}")


def _slot(node: Any, token: str, pointer: str) -> str | int:
    return _index(token, pointer) if isinstance(node, list) else token


def _index(token: str, pointer: str) -> int:
    # RFC 6901: decimal digits without leading zeros; "-" is only meaningful to "add".
    if not token.isascii() or not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchError(f"{pointer!r}: {token!r} is not an array index")
    return int(token)


def _add(parent: Any, key: str, value: Any, pointer: str) -> None:
    if isinstance(parent, dict):
        parent[key] = value
    elif isinstance(parent, list):
        index = len(parent) if key == "-" else _index(key, pointer)
        if index > len(parent):
            raise PatchError(f"{pointer!r}: index {index} is past the end ({len(parent)} items)")
        parent.insert(index, value)
    else:
        raise PatchError(f"{pointer!r}: cannot add inside a {type(parent).__name__}")
