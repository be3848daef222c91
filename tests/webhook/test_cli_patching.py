"""The injector's own RFC 6902 applier agrees with the jsonpatch library."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from gvirtus_kai_webhook.models import JsonPatchOperation
from gvirtus_kai_webhook.mutation import mutate_pod
from gvirtus_kai_webhook.patching import PatchError, apply_patch, parse_pointer
from gvirtus_kai_webhook.settings import Settings
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from .pods import BACKEND_IP, POD_REVIEWS, pod

OPERATIONS = TypeAdapter(list[JsonPatchOperation])


def ours(document: Any, patch: list[dict[str, Any]]) -> Any:
    return apply_patch(copy.deepcopy(document), OPERATIONS.validate_python(patch))


def reference(document: Any, patch: list[dict[str, Any]]) -> Any:
    return jsonpatch.apply_patch(copy.deepcopy(document), patch)


DOCUMENT = {
    "a/b": {"~c": [1, 2, 3]},
    "list": [{"name": "x"}, {"name": "y"}],
    "flag": True,
    "empty": {},
}


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "add", "path": "/new", "value": {"k": "v"}}],
        [{"op": "add", "path": "/a~1b/~0c/-", "value": 4}],
        [{"op": "add", "path": "/a~1b/~0c/0", "value": 0}],
        [{"op": "add", "path": "/a~1b/~0c/3", "value": 9}],
        [{"op": "add", "path": "/list/1/name", "value": "z"}],
        [{"op": "replace", "path": "/list/0", "value": {"name": "w"}}],
        [{"op": "replace", "path": "/flag", "value": False}],
        [{"op": "remove", "path": "/list/0"}],
        [{"op": "remove", "path": "/a~1b/~0c/2"}, {"op": "remove", "path": "/a~1b/~0c/0"}],
        [{"op": "add", "path": "/empty/x~1y", "value": "1"}],
        [{"op": "replace", "path": "/flag", "value": 1}, {"op": "remove", "path": "/flag"}],
        [{"op": "replace", "path": "", "value": [1]}],
    ],
)
def test_operations_give_the_same_document_as_jsonpatch(patch: list[dict[str, Any]]) -> None:
    assert ours(DOCUMENT, patch) == reference(DOCUMENT, patch)


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "replace", "path": "/missing", "value": 1}],
        [{"op": "remove", "path": "/list/2"}],
        [{"op": "add", "path": "/list/3", "value": 1}],
        [{"op": "add", "path": "/list/01", "value": 1}],
        [{"op": "add", "path": "/list/x", "value": 1}],
        [{"op": "add", "path": "/nope/deeper", "value": 1}],
        [{"op": "add", "path": "/flag/x", "value": 1}],
        [{"op": "replace", "path": "/list/-", "value": 1}],
        [{"op": "add", "path": "no-slash", "value": 1}],
        [{"op": "remove", "path": ""}],
    ],
)
def test_patches_jsonpatch_rejects_raise_patch_error(patch: list[dict[str, Any]]) -> None:
    with pytest.raises((jsonpatch.JsonPatchException, jsonpatch.JsonPointerException)):
        reference(DOCUMENT, patch)
    with pytest.raises(PatchError):
        ours(DOCUMENT, patch)


def test_pointer_tokens_are_unescaped_tilde_one_before_tilde_zero() -> None:
    assert parse_pointer("/a~1b/~01") == ["a/b", "~1"]


def test_added_values_are_copies_so_one_patch_can_be_applied_twice() -> None:
    patch = OPERATIONS.validate_python([{"op": "add", "path": "/x", "value": {"k": []}}])
    first = apply_patch({}, patch)
    second = apply_patch({}, patch)
    first["x"]["k"].append(1)
    assert second == {"x": {"k": []}}


@pytest.mark.parametrize("name", POD_REVIEWS)
@pytest.mark.parametrize("strategy", ["mount", "sed"])
def test_mutation_patches_apply_like_jsonpatch(name: str, strategy: str) -> None:
    obj = pod(name)
    for item in obj["spec"]["containers"]:
        item.setdefault("command", ["/entrypoint"])
    mutation = mutate_pod(obj, Settings(strategy=strategy), BACKEND_IP)
    patch = [op.model_dump() for op in mutation.patch]
    assert ours(obj, patch) == reference(obj, patch)


_KEYS = st.text(alphabet="ab/~01-", min_size=1, max_size=4)
_SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=12,
)


@st.composite
def _document_and_patch(draw: st.DrawFn) -> tuple[Any, list[dict[str, Any]]]:
    """A document and an operation on a path that exists in it, or just past it."""
    document = draw(st.dictionaries(_KEYS, _JSON, min_size=1, max_size=4))
    tokens: list[str] = []
    node: Any = document
    while isinstance(node, dict | list) and node and draw(st.booleans()):
        if isinstance(node, dict):
            key = draw(st.sampled_from(sorted(node)))
        else:
            key = draw(st.integers(0, len(node) - 1))
        tokens.append(str(key))
        node = node[key]
    op = draw(st.sampled_from(["add", "replace", "remove"]))
    if op == "add" and isinstance(node, dict | list) and draw(st.booleans()):
        tokens.append("-" if isinstance(node, list) else draw(_KEYS))
    if not tokens:
        tokens.append(draw(_KEYS))
    path = "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)
    operation: dict[str, Any] = {"op": op, "path": path}
    if op != "remove":
        operation["value"] = draw(_JSON)
    return document, [operation]


@settings(max_examples=200, deadline=None)
@given(_document_and_patch())
def test_random_operations_agree_with_jsonpatch(case: tuple[Any, list[dict[str, Any]]]) -> None:
    document, patch = case
    try:
        expected = reference(document, patch)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
        with pytest.raises(PatchError):
            ours(document, patch)
        return
    assert ours(document, patch) == expected
