"""One admission review, from request bytes to response bytes.

Every review whose ``request.uid`` can be read is answered with an AdmissionReview (HTTP 200), even
when the rest of it is unusable: the API server then shows the user our message instead of a
transport error. Only bodies without a readable uid get a 400 with a JSON error body.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping
from typing import Any, NamedTuple, NotRequired, TypedDict

import orjson
from pydantic import ValidationError

from .dns import BackendResolutionError, BackendResolver
from .metrics import Outcome, WebhookMetrics
from .models import ADMISSION_VERSIONS, AdmissionRequest, JsonPatchOperation
from .mutation import MutationDenied, is_enabled, mutate_pod
from .settings import Settings

log = logging.getLogger(__name__)

_READ_FIELDS = ("uid", "kind", "operation", "namespace", "name", "object", "dryRun")
_LOG_FIELD_MAX = 253  # longest Kubernetes name; keeps hostile input from bloating log lines
_MAX_VALIDATION_ERRORS = 3


class _StatusBody(TypedDict):
    code: int
    message: str


class _ResponseBody(TypedDict):
    """``response`` of an AdmissionReview (the wire shape of ``models.AdmissionResponse``).

    Built as a plain dict and serialised with orjson: this is the hot path, and the wire format is
    checked against the pydantic models by the tests.
    """

    uid: str
    allowed: bool
    patchType: NotRequired[str]
    patch: NotRequired[str]
    warnings: NotRequired[list[str]]
    status: NotRequired[_StatusBody]


def _allowed(uid: str, warnings: list[str] | None = None) -> _ResponseBody:
    response: _ResponseBody = {"uid": uid, "allowed": True}
    if warnings:
        response["warnings"] = warnings
    return response


def _denied(uid: str, code: int, message: str) -> _ResponseBody:
    return {"uid": uid, "allowed": False, "status": {"code": code, "message": message}}


def _operation_fields(operation: object) -> dict[str, Any]:
    # A pydantic model's __dict__ holds exactly its fields, and the values are plain JSON data;
    # handing that to orjson is over ten times faster than pydantic's own serialiser here.
    return vars(operation)


def _patch_json(patch: list[JsonPatchOperation]) -> bytes:
    return orjson.dumps(patch, default=_operation_fields)


class HttpReply(NamedTuple):  # a tuple: one per request, cheaper to make than a dataclass
    status: int
    body: bytes


def error_body(status: int, message: str) -> bytes:
    """The JSON body of a non-200 answer (no AdmissionReview could be built)."""
    return orjson.dumps({"code": status, "message": message})


def _clip(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return value if len(value) <= _LOG_FIELD_MAX else value[:_LOG_FIELD_MAX] + "…"


def _pod_name(request: Mapping[str, Any]) -> str | None:
    """The pod's name for logs; pods created by controllers only have a generateName prefix."""
    pod = request.get("object")
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    if isinstance(metadata, dict):
        name = metadata.get("name") or metadata.get("generateName")
        if name:
            return _clip(name)
    return _clip(request.get("name"))


def _describe_validation_error(exc: ValidationError) -> str:
    problems = [
        f"request.{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)[:_MAX_VALIDATION_ERRORS]
    ]
    more = exc.error_count() - len(problems)
    suffix = f" (and {more} more)" if more > 0 else ""
    return f"malformed AdmissionReview: {'; '.join(problems)}{suffix}"


class _Denial(Exception):
    def __init__(self, code: int, message: str, outcome: Outcome = Outcome.DENIED) -> None:
        super().__init__(message)
        self.code = code
        self.outcome = outcome


class AdmissionReviewer:
    def __init__(
        self, settings: Settings, resolver: BackendResolver, metrics: WebhookMetrics
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._metrics = metrics
        self._admissions = {o: metrics.admissions.labels(o.value) for o in Outcome}

    async def review(self, body: bytes) -> HttpReply:
        """Answer one ``POST /mutate`` body; never raises."""
        started = time.perf_counter()
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self.reject(400, f"request body is not valid JSON: {exc}", started)
        if not isinstance(document, dict):
            return self.reject(400, "request body must be a JSON AdmissionReview object", started)
        api_version = document.get("apiVersion")
        if api_version not in ADMISSION_VERSIONS:
            message = (
                f"unsupported apiVersion {_clip(api_version)!r}; "
                f"supported: {', '.join(ADMISSION_VERSIONS)}"
            )
            return self.reject(400, message, started)
        request = document.get("request")
        uid = request.get("uid") if isinstance(request, dict) else None
        if not isinstance(uid, str) or not uid:
            return self.reject(400, "AdmissionReview has no request.uid", started)
        assert isinstance(request, dict)

        outcome, response = await self._decide(request, uid)
        payload = orjson.dumps(
            {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}
        )
        elapsed = time.perf_counter() - started
        self._admissions[outcome].inc()
        self._metrics.admission_duration.observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "uid": _clip(uid),
                "namespace": _clip(request.get("namespace")),
                "pod": _pod_name(request),
                "outcome": outcome.value,
                "duration_ms": round(elapsed * 1000, 3),
            }
            if "status" in response:
                fields["reason"] = response["status"]["message"]
            log.info("admission", extra=fields)
        return HttpReply(200, payload)

    async def _decide(self, request: dict[str, Any], uid: str) -> tuple[Outcome, _ResponseBody]:
        try:
            # Validate only the fields the decision reads: the rest of a review (userInfo,
            # options, oldObject...) would cost time to copy and is never looked at.
            read = {field: request[field] for field in _READ_FIELDS if field in request}
            try:
                parsed = AdmissionRequest.model_validate(read)
            except ValidationError as exc:
                raise _Denial(400, _describe_validation_error(exc), Outcome.ERROR) from None
            return await self._admit(parsed)
        except _Denial as denial:
            return denial.outcome, _denied(uid, denial.code, str(denial))
        except Exception as exc:
            # A bug, not a user error: refuse the pod with a message that says so.
            log.exception("admission failed", extra={"uid": _clip(uid)})
            message = (
                f"internal error in the GVirtuS webhook ({type(exc).__name__}); "
                "see the webhook logs"
            )
            return Outcome.ERROR, _denied(uid, 500, message)

    async def _admit(self, request: AdmissionRequest) -> tuple[Outcome, _ResponseBody]:
        kind = request.kind
        if kind is None or kind.kind != "Pod" or kind.group != "" or request.operation != "CREATE":
            return Outcome.ALLOWED, _allowed(request.uid)
        pod = request.object
        if pod is None:
            message = "malformed AdmissionReview: request.object is missing"
            raise _Denial(400, message, Outcome.ERROR)
        if not is_enabled(pod, self._settings):
            return Outcome.ALLOWED, _allowed(request.uid)
        try:
            address = await self._resolver.resolve()
        except BackendResolutionError as exc:
            raise _Denial(503, str(exc)) from None
        try:
            mutation = mutate_pod(pod, self._settings, address)
        except MutationDenied as exc:
            raise _Denial(400, str(exc)) from None
        response = _allowed(request.uid, list(mutation.warnings))
        if not mutation.patch:
            return Outcome.ALLOWED, response
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(_patch_json(mutation.patch)).decode("ascii")
        return Outcome.MUTATED, response

    def reject(self, status: int, message: str, started: float | None = None) -> HttpReply:
        """Count, log and answer a request that carries no usable AdmissionReview."""
        elapsed = 0.0 if started is None else time.perf_counter() - started
        self._admissions[Outcome.ERROR].inc()
        self._metrics.admission_duration.observe(elapsed)
        log.warning(
            "admission request rejected",
            extra={"status": status, "reason": message[:_LOG_FIELD_MAX]},
        )
        return HttpReply(status, error_body(status, message))
