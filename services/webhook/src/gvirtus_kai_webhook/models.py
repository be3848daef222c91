"""Typed wire models: AdmissionReview (v1 and v1beta1) and JSON Patch (RFC 6902) operations.

Lenient on input (unknown fields are kept, not rejected) and strict on the fields we read.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

ADMISSION_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class GroupVersionKind(_Lenient):
    group: str = ""
    version: str = ""
    kind: str = ""


class AdmissionRequest(_Lenient):
    uid: Annotated[str, Field(min_length=1)]
    kind: GroupVersionKind | None = None
    operation: str | None = None
    namespace: str | None = None
    name: str | None = None
    object: dict[str, Any] | None = None
    dryRun: bool | None = None


class AdmissionReview(_Lenient):
    apiVersion: str = "admission.k8s.io/v1"
    kind: str = "AdmissionReview"
    request: AdmissionRequest


class _Strict(BaseModel):
    """What we send: an unknown field here is a bug of ours, so validating our output fails."""

    model_config = ConfigDict(extra="forbid")


class Status(_Strict):
    code: int
    message: str


class AdmissionResponse(_Strict):
    uid: str
    allowed: bool
    patchType: Literal["JSONPatch"] | None = None
    patch: str | None = None  # base64 of the JSON Patch document
    warnings: list[str] | None = None
    status: Status | None = None


class AdmissionReviewResponse(_Strict):
    apiVersion: str
    kind: Literal["AdmissionReview"] = "AdmissionReview"
    response: AdmissionResponse


class AddOperation(BaseModel):
    op: Literal["add"] = "add"
    path: str
    value: JsonValue


class ReplaceOperation(BaseModel):
    op: Literal["replace"] = "replace"
    path: str
    value: JsonValue


class RemoveOperation(BaseModel):
    op: Literal["remove"] = "remove"
    path: str


class TestOperation(BaseModel):
    __test__ = False  # not a pytest test class
    op: Literal["test"] = "test"
    path: str
    value: JsonValue


JsonPatchOperation = Annotated[
    AddOperation | ReplaceOperation | RemoveOperation | TestOperation, Field(discriminator="op")
]


def escape_pointer_token(token: str) -> str:
    """RFC 6901: ``~`` becomes ``~0`` and ``/`` becomes ``~1`` (order matters)."""
    return token.replace("~", "~0").replace("/", "~1")


def json_pointer(*tokens: str | int) -> str:
    """Build a JSON Pointer from raw path tokens, e.g. ("metadata", "labels", "gvirtus.io/x")."""
    return "".join("/" + escape_pointer_token(str(t)) for t in tokens)
