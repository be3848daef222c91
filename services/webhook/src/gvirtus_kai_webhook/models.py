"""Typed wire models: AdmissionReview (v1 and v1beta1), JSON Patch (RFC 6902), error bodies, and
the shape of the pod fields the mutation reads.

Lenient on input (unknown fields are kept, not rejected) and strict on the fields we read.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

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


class ErrorBody(_Strict):
    """The answer to a request that carries no usable AdmissionReview (no uid to answer)."""

    code: int
    message: str


class AddOperation(_Strict):
    op: Literal["add"] = "add"
    path: str
    value: Any  # any JSON document


class ReplaceOperation(_Strict):
    op: Literal["replace"] = "replace"
    path: str
    value: Any  # any JSON document


class RemoveOperation(_Strict):
    op: Literal["remove"] = "remove"
    path: str


JsonPatchOperation = Annotated[
    AddOperation | ReplaceOperation | RemoveOperation, Field(discriminator="op")
]
JsonPatch = TypeAdapter(list[JsonPatchOperation])


def json_pointer(*tokens: str | int) -> str:
    """A JSON Pointer from raw path tokens, e.g. ("metadata", "labels", "gvirtus.io/x"), escaped
    as RFC 6901 says: "~" becomes "~0", then "/" becomes "~1"."""
    return "".join(["/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens])


# --- the pod fields the mutation reads, with the types it relies on ----------------------------
# Checked before a pod is mutated, so a wrong-typed pod (``containers: ["app"]``) is refused with
# a message naming the field instead of getting a patch that cannot apply. Only these fields are
# checked; anything else in the pod is left to the API server.


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore")


Quantity = str | int | float


class _Resources(_Shape):
    limits: dict[str, Quantity] | None = None
    requests: dict[str, Quantity] | None = None


class _SecurityContext(_Shape):
    readOnlyRootFilesystem: bool | None = None


class _Container(_Shape):
    name: str = ""
    command: list[str] | None = None
    env: list[dict[str, Any]] | None = None
    volumeMounts: list[dict[str, Any]] | None = None
    resources: _Resources | None = None
    securityContext: _SecurityContext | None = None


class _PodSpec(_Shape):
    containers: list[_Container] | None = None
    initContainers: list[_Container] | None = None
    volumes: list[dict[str, Any]] | None = None
    nodeSelector: dict[str, str] | None = None
    schedulingGates: list[dict[str, Any]] | None = None


class _ObjectMeta(_Shape):
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class PodShape(_Shape):
    metadata: _ObjectMeta | None = None
    spec: _PodSpec | None = None
