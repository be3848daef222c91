"""One admission review: request body in, typed AdmissionReview answer out.

Every review whose ``request.uid`` can be read is answered with an AdmissionReview (HTTP 200), even
when the rest of it is unusable: the API server then shows the user our message instead of a
transport error. Only bodies without a readable uid are rejected (``RequestRejected``, 400).
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import orjson
from gvirtus_kai_common.logs import clip
from pydantic import ValidationError

from gvirtus_kai_webhook.dns import BackendResolutionError, BackendResolver
from gvirtus_kai_webhook.gpu_guard import GuardSkipped, guard_pod
from gvirtus_kai_webhook.metrics import Outcome, WebhookMetrics
from gvirtus_kai_webhook.models import (
    ADMISSION_VERSIONS,
    AdmissionRequest,
    AdmissionResponse,
    AdmissionReview,
    AdmissionReviewResponse,
    JsonPatch,
    Status,
)
from gvirtus_kai_webhook.mutation import (
    MutationDenied,
    is_enabled,
    mutate_pod,
    needs_backend_address,
    pinned_address,
)
from gvirtus_kai_webhook.settings import Settings

log = logging.getLogger(__name__)

MAX_VALIDATION_ERRORS = 3


class RequestRejected(Exception):
    """No AdmissionReview can be answered: ``status`` and ``message`` make the error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Denial(Exception):
    def __init__(self, code: int, message: str, outcome: Outcome = Outcome.DENIED) -> None:
        super().__init__(message)
        self.code = code
        self.outcome = outcome


def _pod_name(request: AdmissionRequest) -> str | None:
    """The pod's name for logs; pods created by controllers only have a generateName prefix."""
    metadata = (request.object or {}).get("metadata")
    if isinstance(metadata, dict):
        name = metadata.get("name") or metadata.get("generateName")
        if name:
            return clip(name)
    return clip(request.name) if request.name else None


def _describe_validation_error(exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)[:MAX_VALIDATION_ERRORS]
    ]
    more = exc.error_count() - len(problems)
    suffix = f" (and {more} more)" if more > 0 else ""
    return f"malformed AdmissionReview: {clip('; '.join(problems))}{suffix}"


class AdmissionReviewer:
    def __init__(
        self, settings: Settings, resolver: BackendResolver, metrics: WebhookMetrics
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._metrics = metrics

    async def review(self, body: bytes, *, guard: bool = False) -> AdmissionReviewResponse:
        """Answer one ``POST /mutate`` body (with ``guard``, one of the guard route, which keeps
        plain GPU pods off virtual GPUs); raises only ``RequestRejected``."""
        started = time.perf_counter()
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise self.reject(400, f"request body is not valid JSON: {exc}", started) from None
        if not isinstance(document, dict):
            raise self.reject(400, "request body must be a JSON AdmissionReview object", started)
        api_version = document.get("apiVersion")
        if api_version not in ADMISSION_VERSIONS:
            message = (
                f"unsupported apiVersion {clip(repr(api_version))}; "
                f"supported: {', '.join(ADMISSION_VERSIONS)}"
            )
            raise self.reject(400, message, started)
        request = document.get("request")
        uid = request.get("uid") if isinstance(request, dict) else None
        if not isinstance(uid, str) or not uid:
            raise self.reject(400, "AdmissionReview has no request.uid", started)

        try:
            review = AdmissionReview.model_validate(document)
        except ValidationError as exc:
            outcome = Outcome.ERROR
            message = _describe_validation_error(exc)
            response = _unchecked(uid, message) if guard else _denied(uid, 400, message)
            parsed = None
        else:
            parsed = review.request
            outcome, response = self._guard(parsed) if guard else await self._decide(parsed)
        elapsed = time.perf_counter() - started
        self._metrics.admissions.labels(outcome.value).inc()
        self._metrics.admission_duration.observe(elapsed)
        fields: dict[str, Any] = {
            "uid": clip(uid),
            "namespace": clip(parsed.namespace) if parsed and parsed.namespace else None,
            "pod": _pod_name(parsed) if parsed else None,
            "outcome": outcome.value,
            "route": "guard" if guard else "mutate",
            "duration_ms": round(elapsed * 1000, 3),
        }
        if response.status is not None:
            fields["reason"] = response.status.message
        log.info("admission", extra=fields)
        return AdmissionReviewResponse(apiVersion=api_version, response=response)

    async def _decide(self, request: AdmissionRequest) -> tuple[Outcome, AdmissionResponse]:
        try:
            return await self._admit(request)
        except _Denial as denial:
            return denial.outcome, _denied(request.uid, denial.code, str(denial))
        except Exception as exc:
            # A bug, not a user error: refuse the pod with a message that says so.
            log.exception("admission failed", extra={"uid": clip(request.uid)})
            message = (
                f"internal error in the GVirtuS webhook ({type(exc).__name__}); "
                "see the webhook logs"
            )
            return Outcome.ERROR, _denied(request.uid, 500, message)

    async def _admit(self, request: AdmissionRequest) -> tuple[Outcome, AdmissionResponse]:
        kind = request.kind
        if kind is None or kind.kind != "Pod" or kind.group != "" or request.operation != "CREATE":
            return Outcome.ALLOWED, AdmissionResponse(uid=request.uid, allowed=True)
        pod = request.object
        if pod is None:
            message = "malformed AdmissionReview: request.object is missing"
            raise _Denial(400, message, Outcome.ERROR)
        if not is_enabled(pod, self._settings):
            return Outcome.ALLOWED, AdmissionResponse(uid=request.uid, allowed=True)
        address = None
        if needs_backend_address(pod, self._settings):
            try:
                address = await self._resolver.pick(pinned_address(pod, self._settings))
            except BackendResolutionError as exc:
                raise _Denial(503, str(exc)) from None
        try:
            mutation = mutate_pod(pod, self._settings, address)
        except MutationDenied as exc:
            raise _Denial(400, str(exc)) from None
        warnings = mutation.warnings or None
        if not mutation.patch:
            unchanged = AdmissionResponse(uid=request.uid, allowed=True, warnings=warnings)
            return Outcome.ALLOWED, unchanged
        patch = base64.b64encode(JsonPatch.dump_json(mutation.patch)).decode("ascii")
        response = AdmissionResponse(
            uid=request.uid, allowed=True, warnings=warnings, patchType="JSONPatch", patch=patch
        )
        return Outcome.MUTATED, response

    def _guard(self, request: AdmissionRequest) -> tuple[Outcome, AdmissionResponse]:
        """Keep a plain GPU pod off virtual GPUs. Never refuses a pod (nor a malformed review):
        the guard is registered with failurePolicy Ignore, and refusing here would be stricter
        than being down."""
        kind = request.kind
        pod = request.object
        if kind is None or kind.kind != "Pod" or kind.group != "" or request.operation != "CREATE":
            return Outcome.ALLOWED, AdmissionResponse(uid=request.uid, allowed=True)
        if pod is None:
            return Outcome.ERROR, _unchecked(request.uid, "the review carries no pod")
        settings = self._settings
        try:
            patch = guard_pod(
                pod,
                enable_label=settings.enable_label,
                gpu_resource=settings.gpu_resource,
                virtual_nodes=settings.virtual_gpu_requirements,
            )
        except GuardSkipped as exc:
            return Outcome.ERROR, _unchecked(request.uid, f"the pod is malformed: {exc}")
        except Exception:
            log.exception("guard failed", extra={"uid": clip(request.uid)})
            return Outcome.ERROR, _unchecked(request.uid, "internal error; see the webhook logs")
        if not patch:
            return Outcome.ALLOWED, AdmissionResponse(uid=request.uid, allowed=True)
        encoded = base64.b64encode(JsonPatch.dump_json(patch)).decode("ascii")
        response = AdmissionResponse(
            uid=request.uid, allowed=True, patchType="JSONPatch", patch=encoded
        )
        return Outcome.MUTATED, response

    def reject(self, status: int, message: str, started: float | None = None) -> RequestRejected:
        """Count and log a request that carries no usable AdmissionReview; the exception."""
        elapsed = 0.0 if started is None else time.perf_counter() - started
        self._metrics.admissions.labels(Outcome.ERROR.value).inc()
        self._metrics.admission_duration.observe(elapsed)
        log.warning("admission request rejected", extra={"status": status, "reason": clip(message)})
        return RequestRejected(status, message)


def _unchecked(uid: str, reason: str) -> AdmissionResponse:
    """The guard's answer when it cannot look at the pod: allowed, saying why."""
    warning = clip(f"GVirtuS: not checked for virtual GPUs: {reason}")
    return AdmissionResponse(uid=uid, allowed=True, warnings=[warning])


def _denied(uid: str, code: int, message: str) -> AdmissionResponse:
    return AdmissionResponse(uid=uid, allowed=False, status=Status(code=code, message=message))
