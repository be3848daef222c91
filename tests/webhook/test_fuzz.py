"""The webhook's one fuzz suite: generated AdmissionReviews over HTTPS to the real process.

One ``gvirtus-webhook`` process serves every example over TLS (one keep-alive client, as the API
server keeps one), resolving the backend in a DNS server on 127.0.0.1 and pinning every pod
(``PLACEMENT=dns``); generated valid pods also go to a second one with the chart's default,
``PLACEMENT=controller`` (every pod gated), so both placements are
fuzzed. Every review must get a well-formed answer: 200 with an AdmissionReview in the apiVersion
asked, echoing the uid (400 with a JSON error body only when no uid can be read), never an
internal error; an allowed patch always applies (``jsonpatch``). Generated valid pods
(``reviews.valid_pods``) are allowed exactly when the rules restated here allow them; the patched
pod is one Kubernetes 1.30 accepts (``podrules``), holds the GVirtuS config where the pod asked for
it, is gated or pinned as its placement says, and sent again gets no patch. A wrong type in a
field the mutation reads is denied with 400. Afterwards the process must be healthy, having logged
no error.

``--hypothesis-show-statistics`` shows what the examples exercised (mutated, denied and why).
"""

from __future__ import annotations

import base64
import copy
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jsonpatch
import orjson
import pytest
import trustme
from gvirtus_kai_common.gvirtus import (
    BACKEND_ANNOTATION,
    BACKEND_GATE,
    PROPERTIES_ANNOTATION,
    frontend_config,
)
from gvirtus_kai_common.gvirtus import DEFAULT_PLUGINS as PLUGINS
from gvirtus_kai_webhook.models import AdmissionResponse, AdmissionReviewResponse
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.dnsserver import LoopbackDnsServer
from tests.tlsfiles import SecretVolume, client_context, serving_cert
from tests.webhook.conftest import BACKEND_ADDRESS, REVIEWS
from tests.webhook.podrules import pod_problems
from tests.webhook.reviews import (
    ADMISSION_VERSIONS,
    CONTAINERS,
    ENABLE_LABEL,
    FRONTEND_LABEL,
    GPU,
    HOME,
    OWN_ENV,
    OWN_VOLUME,
    STRATEGY,
    huge_text,
    json_type,
    review,
    valid_pods,
    wrong_typed,
)
from tests.webhookproc import WebhookProcess, api_server_client, start_webhook

V1 = ADMISSION_VERSIONS[0]
# Bound on a log line and on a denial message whatever the pod holds (strings are clipped).
CLIPPED_BYTES = 4096
DEFAULT_HOME = "/usr/local/gvirtus"
# The headless backend Service the DNS server answers for, and its two ready backend pods: each
# pinned pod gets one of them, with the container port.
BACKEND_HOST = "backend.fuzz.svc.cluster.local"
READY_BACKENDS = (BACKEND_ADDRESS, "10.96.0.43")
BACKEND_PORT = 9999
# What a pod may name already (copied from another pod, or an earlier pinning): a ready backend,
# one that is gone, one on another port.
EARLIER_BACKENDS = (f"{BACKEND_ADDRESS}:{BACKEND_PORT}", f"10.1.2.3:{BACKEND_PORT}", "10.96.0.43:1")


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,  # a loaded CI machine must not turn slowness into failures
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- the webhook under test ---------------------------------------------------------------------


@dataclass
class Webhook:
    process: WebhookProcess
    client: httpx.Client

    def post(self, body: bytes) -> httpx.Response:
        return self.process.post(self.client, "/mutate", body)


def serve(tmp_path_factory: pytest.TempPathFactory, placement: str) -> Iterator[Webhook]:
    """One process for every example; afterwards it must still be healthy, having logged no
    internal error."""
    directory = tmp_path_factory.mktemp("fuzz")
    ca = trustme.CA()
    volume = SecretVolume(directory / "tls")
    volume.write(serving_cert(ca))
    log_file = directory / "webhook.log"
    with LoopbackDnsServer() as dns, log_file.open("wb") as stderr:
        dns.set_a(BACKEND_HOST, *READY_BACKENDS, ttl=3600)
        process = start_webhook(
            {
                "TLS_CERT_FILE": str(volume.cert_file),
                "TLS_KEY_FILE": str(volume.key_file),
                "DNS_NAMESERVERS": dns.nameserver,
                "PLACEMENT": placement,
                "BACKEND_HOST": BACKEND_HOST,
                "BACKEND_PORT": str(BACKEND_PORT),
                "LOG_LEVEL": "info",  # one line per review: each is checked for its length
            },
            stderr=stderr,
        )
        try:
            process.wait_ready(client_context(ca))
            with api_server_client(client_context(ca)) as client:
                yield Webhook(process, client)
                assert process.get(client, "/healthz").status_code == 200
        finally:
            process.stop()
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line]
    assert [line for line in lines if line["level"] == "error"] == []
    # Clipped: no client-supplied string reaches a log line whole.
    assert max(len(json.dumps(line)) for line in lines) < CLIPPED_BYTES


@pytest.fixture(scope="module")
def webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    """Every pod pinned at admission, so every patch carries the address to check."""
    yield from serve(tmp_path_factory, "dns")


@pytest.fixture(scope="module")
def gating_webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    """The chart's default: mount-strategy pods gated for the placement controller."""
    yield from serve(tmp_path_factory, "controller")


# --- what every answer must be ------------------------------------------------------------------


def readable_uid(body: bytes) -> str | None:
    """The uid the contract promises to echo, or None when the answer must be a 400.

    "Readable" is by the webhook's own parser, which refuses, for example, integers beyond 64 bits
    and nesting deeper than 1024: such bodies are 400s even when the standard library reads them.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or document.get("apiVersion") not in ADMISSION_VERSIONS:
        return None
    request = document.get("request")
    uid = request.get("uid") if isinstance(request, dict) else None
    return uid if isinstance(uid, str) and uid else None


def check_answer(body: bytes, response: httpx.Response) -> AdmissionResponse | None:
    """The answer is well-formed for ``body``; the admission response, when there is one."""
    assert response.headers["content-type"] == "application/json"
    uid = readable_uid(body)
    if uid is None:
        assert response.status_code == 400, response.content[:300]
        error = response.json()
        assert (error["code"], type(error["message"])) == (400, str)
        assert error["message"]
        return None
    assert response.status_code == 200, response.content[:300]
    answer = AdmissionReviewResponse.model_validate_json(response.content)
    assert answer.apiVersion == orjson.loads(body)["apiVersion"]
    assert answer.response.uid == uid
    if not answer.response.allowed:
        assert answer.response.status is not None
        assert answer.response.status.message
        # A 500 denial means an unexpected exception: hostile input must be named, not crash.
        assert answer.response.status.code != 500, answer.response.status.message
    return answer.response


def patch_of(response: AdmissionResponse) -> list[dict[str, Any]]:
    if response.patch is None:
        return []
    assert response.patchType == "JSONPatch"
    operations: list[dict[str, Any]] = json.loads(base64.b64decode(response.patch))
    assert isinstance(operations, list)
    return operations


def send(webhook: Webhook, document: dict[str, Any]) -> AdmissionResponse:
    body = json.dumps(document).encode()
    response = check_answer(body, webhook.post(body))
    assert response is not None
    return response


def patched(pod: dict[str, Any], response: AdmissionResponse) -> dict[str, Any]:
    """The pod after the answer's patch, applied by an independent RFC 6902 library (raises
    ``jsonpatch.JsonPatchException`` or ``jsonpointer.JsonPointerException`` if it cannot)."""
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(pod), patch_of(response))
    return result


# --- the rules, restated independently of the implementation -----------------------------------


def annotations_of(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["metadata"].get("annotations") or {}


def everyone(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def strategy_of(pod: dict[str, Any]) -> str:
    return str(annotations_of(pod).get(STRATEGY, "mount"))


def home_of(pod: dict[str, Any]) -> str:
    return str(annotations_of(pod).get(HOME, DEFAULT_HOME))


def is_valid_home(home: str) -> bool:
    return home.startswith("/") and home.isprintable() and ".." not in home.split("/")


def config_file(pod: dict[str, Any]) -> str:
    return posixpath.join(posixpath.normpath(home_of(pod)), "etc", "properties.json")


def named_targets(pod: dict[str, Any]) -> list[str]:
    requested = str(annotations_of(pod)[CONTAINERS])
    return list(dict.fromkeys(n.strip() for n in requested.split(",") if n.strip()))


def target_names(pod: dict[str, Any]) -> list[str]:
    """The containers that get the config: named by annotation, else the GPU users, else the
    first container."""
    if CONTAINERS in annotations_of(pod):
        return named_targets(pod)
    containers = pod["spec"]["containers"]
    users = [c["name"] for c in containers if uses_gpu(c)]
    return users or [containers[0]["name"]]


def uses_gpu(container: dict[str, Any]) -> bool:
    resources = container.get("resources") or {}
    quantities = [(resources.get(kind) or {}).get(GPU) for kind in ("limits", "requests")]
    return any(quantity not in (None, "0") for quantity in quantities)


def denial_reasons(pod: dict[str, Any]) -> list[str]:
    """Why the webhook must refuse an enabled, valid pod (empty: it must allow it)."""
    reasons = []
    annotations = annotations_of(pod)
    if strategy_of(pod) not in ("mount", "sed"):
        reasons.append("unknown strategy")
    if HOME in annotations and not is_valid_home(home_of(pod)):
        reasons.append("invalid home")
    names = {c["name"] for c in everyone(pod)}
    if CONTAINERS in annotations and (
        not named_targets(pod) or not set(named_targets(pod)) <= names
    ):
        reasons.append("containers annotation names no or unknown containers")
    if strategy_of(pod) == "sed" and not reasons:
        by_name = {c["name"]: c for c in everyone(pod)}
        if any(not by_name[name].get("command") for name in target_names(pod)):
            reasons.append("sed strategy without a command to wrap")
    if (pod["spec"].get("nodeSelector") or {}).get(FRONTEND_LABEL, "true") != "true":
        reasons.append("nodeSelector excludes frontend nodes")
    return reasons


def gates_of(pod: dict[str, Any]) -> list[str]:
    return [gate["name"] for gate in pod["spec"].get("schedulingGates") or []]


BACKEND_SOURCE = {
    "fieldRef": {"apiVersion": "v1", "fieldPath": f"metadata.annotations['{BACKEND_ANNOTATION}']"}
}


def check_mutated(before: dict[str, Any], after: dict[str, Any], placement: str) -> None:
    """The GVirtuS config is where the pod asked for it, the pod gated for the controller
    (placement=controller) or pinned to the backend; nothing of the pod's own is lost."""
    path = config_file(before)
    sed = strategy_of(before) == "sed"
    targets = target_names(before)
    original = {c["name"]: c for c in everyone(before)}
    for container in everyone(after):
        name = container["name"]
        command = original[name].get("command")
        if name not in targets or not sed:
            assert container.get("command") == command
            continue
        # The original command runs after the sed script: sh -c SCRIPT -- COMMAND...
        assert (container["command"][:2], container["command"][4:]) == (["/bin/sh", "-c"], command)
    for name in targets:
        container = next(c for c in everyone(after) if c["name"] == name)
        env = {e["name"]: e.get("value") for e in container.get("env") or []}
        assert env[OWN_ENV] == path
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
        assert (mounts.get(path) == OWN_VOLUME) != sed
        assert (OWN_VOLUME in mounts.values()) != sed
        # sed: the wrapper gets the address the kubelet reads from the annotation at start.
        sources = {e["name"]: e.get("valueFrom") for e in container.get("env") or []}
        assert (sources.get("GVIRTUS_KAI_BACKEND") == BACKEND_SOURCE) == sed
        if sed:
            assert not any(ready in container["command"][2] for ready in READY_BACKENDS)
    if placement == "controller":
        # Gated: the gate once (appended, or kept where a copy had it), and no address at all.
        before_gates = gates_of(before)
        expected = before_gates if BACKEND_GATE in before_gates else [*before_gates, BACKEND_GATE]
        assert gates_of(after) == expected
        assert not {PROPERTIES_ANNOTATION, BACKEND_ANNOTATION} & annotations_of(after).keys()
    else:
        assert gates_of(after) == [gate for gate in gates_of(before) if gate != BACKEND_GATE]
        # Pinned to a ready backend with the container port; one the pod already named is kept.
        backend = annotations_of(after)[BACKEND_ANNOTATION]
        address, _, port = backend.rpartition(":")
        assert (address in READY_BACKENDS, port) == (True, str(BACKEND_PORT))
        earlier = annotations_of(before).get(BACKEND_ANNOTATION)
        if earlier in {f"{ready}:{BACKEND_PORT}" for ready in READY_BACKENDS}:
            event("pinned: kept the ready backend it named")
            assert backend == earlier
        if not sed:
            properties = annotations_of(after)[PROPERTIES_ANNOTATION]
            assert json.loads(properties) == frontend_config(address, BACKEND_PORT, PLUGINS)
    assert after["spec"]["nodeSelector"] == {
        **(before["spec"].get("nodeSelector") or {}),
        FRONTEND_LABEL: "true",
    }
    kept = {k: v for k, v in annotations_of(before).items() if not k.startswith("gvirtus.io/")}
    assert kept.items() <= annotations_of(after).items()
    assert after["metadata"]["labels"] == before["metadata"]["labels"]


# --- generated valid pods ---------------------------------------------------------------------


@fuzz(1500)
@given(
    pod=valid_pods(EARLIER_BACKENDS),
    api_version=st.sampled_from(ADMISSION_VERSIONS),
    placement=st.sampled_from(["dns", "controller"]),
)
def test_valid_pods_are_allowed_by_the_rules_and_patched_into_valid_idempotent_pods(
    webhook: Webhook,
    gating_webhook: Webhook,
    pod: dict[str, Any],
    api_version: str,
    placement: str,
) -> None:
    if placement == "controller":
        webhook = gating_webhook
    response = send(webhook, review(pod, api_version))
    if pod["metadata"]["labels"][ENABLE_LABEL] != "true":
        event("not enabled")
        assert (response.allowed, patch_of(response)) == (True, [])
        return
    reasons = denial_reasons(pod)
    event(f"denied: {reasons[0]}" if reasons else f"mutated: {strategy_of(pod)}, {placement}")
    assert response.allowed == (not reasons), (reasons, response.status)
    if not response.allowed:
        assert response.status is not None
        assert response.status.code == 400
        return
    after = patched(pod, response)
    assert pod_problems(after) == []
    check_mutated(pod, after, placement)
    again = send(webhook, review(after, api_version))
    assert (again.allowed, patch_of(again)) == (True, [])


# --- wrong types --------------------------------------------------------------------------------

# The pod fields a GVirtuS mutation must read, with the JSON types they may have ("*": any key or
# index). The mutation decides from labels, annotations, containers (name, command, resources,
# securityContext) and the node selector, and patches env, volumeMounts and volumes: in an enabled
# pod, another type there is denied with 400. Null is "absent" for a field, but not for a list
# item or a map value. Scalars the mutation reads leniently are left out (a GPU quantity may be a
# number, readOnlyRootFilesystem a 0): whatever they hold, the patch applies.
READ_FIELDS: dict[tuple[str, ...], set[str]] = {
    ("metadata",): {"object"},
    ("metadata", "labels"): {"object"},
    ("metadata", "labels", "*"): {"string"},
    ("metadata", "annotations"): {"object"},
    ("metadata", "annotations", "*"): {"string"},
    ("spec",): {"object"},
    ("spec", "volumes"): {"array"},
    ("spec", "volumes", "*"): {"object"},
    ("spec", "nodeSelector"): {"object"},
    ("spec", "nodeSelector", "*"): {"string"},
}
for _list in ("containers", "initContainers"):
    _container = ("spec", _list, "*")
    READ_FIELDS |= {
        ("spec", _list): {"array"},
        _container: {"object"},
        (*_container, "name"): {"string"},
        (*_container, "command"): {"array"},
        (*_container, "command", "*"): {"string"},
        (*_container, "env"): {"array"},
        (*_container, "env", "*"): {"object"},
        (*_container, "volumeMounts"): {"array"},
        (*_container, "volumeMounts", "*"): {"object"},
        (*_container, "resources"): {"object"},
        (*_container, "resources", "limits"): {"object"},
        (*_container, "resources", "requests"): {"object"},
        (*_container, "securityContext"): {"object"},
    }


def read_field(path: tuple[Any, ...]) -> tuple[tuple[str, ...], set[str]] | None:
    """The READ_FIELDS entry that ``path`` falls under, or None when the mutation ignores it."""
    for pattern, types in READ_FIELDS.items():
        if len(pattern) == len(path) and all(
            p in ("*", t) for p, t in zip(pattern, path, strict=True)
        ):
            return pattern, types
    return None


def is_enabled(pod: dict[str, Any]) -> bool:
    metadata = pod.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    return isinstance(labels, dict) and labels.get(ENABLE_LABEL) == "true"


def must_be_refused(pod: dict[str, Any], path: tuple[Any, ...]) -> bool:
    """Whether the value at ``path`` has a type the mutation cannot read, in an enabled pod."""
    field = read_field(path)
    if field is None or not is_enabled(pod):
        return False
    pattern, types = field
    value: Any = pod
    for token in path:
        value = value[token]
    if value is None:
        return pattern[-1] == "*"  # a null list item or map value; a null field is absent
    return json_type(value) not in types


APP = {"name": "app", "image": "app:1", "command": ["run"]}


def enabled_pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {ENABLE_LABEL: "true"}},
        "spec": {"containers": [APP], **spec},
    }


@fuzz(800)
@given(case=wrong_typed(), api_version=st.sampled_from(ADMISSION_VERSIONS))
@example(case=(enabled_pod(containers=["app"]), ("spec", "containers", 0)), api_version=V1)
@example(case=(enabled_pod(containers="app"), ("spec", "containers")), api_version=V1)
@example(case=(enabled_pod(initContainers=["x"]), ("spec", "initContainers", 0)), api_version=V1)
@example(case=(enabled_pod(volumes=["data"]), ("spec", "volumes", 0)), api_version=V1)
@example(
    case=(enabled_pod(containers=[{**APP, "env": "A=1"}]), ("spec", "containers", 0, "env")),
    api_version=V1,
)
def test_a_wrong_typed_pod_is_denied_with_400_or_gets_a_patch_that_applies(
    webhook: Webhook, case: tuple[dict[str, Any], tuple[Any, ...]], api_version: str
) -> None:
    """Denied with 400 when the mutation must read the wrong-typed field; otherwise denied with
    400 or answered with a patch that applies (and, for a pod that is still valid, gives a valid
    pod and nothing more when sent again)."""
    pod, where = case
    refuse = must_be_refused(pod, where)
    response = send(webhook, review(pod, api_version))
    event(f"{'allowed' if response.allowed else 'denied'}, {'read' if refuse else 'other'} field")
    if refuse or not response.allowed:
        assert response.status is not None, f"{where} has a wrong type, yet the pod was allowed"
        assert (response.allowed, response.status.code, response.patch) == (False, 400, None)
        return
    after = patched(pod, response)
    if not pod_problems(pod):  # null where a value may be absent: still a valid pod
        assert pod_problems(after) == []
        again = send(webhook, review(after, api_version))
        assert (again.allowed, patch_of(again)) == (True, [])


# --- huge strings -----------------------------------------------------------------------------


HUGE_SELECTOR = enabled_pod(nodeSelector={FRONTEND_LABEL: "v" * 100_000})  # was quoted whole


@fuzz(300)
@given(case=huge_text())
@example(case=(HUGE_SELECTOR, ("spec", "nodeSelector", FRONTEND_LABEL)))
def test_a_huge_string_anywhere_in_a_pod_is_clipped_in_the_answer(
    webhook: Webhook, case: tuple[dict[str, Any], tuple[Any, ...]]
) -> None:
    """The answer's message and warnings are bounded (and its log line: see the fixture)."""
    pod, where = case
    response = send(webhook, review(pod))
    event(f"{'allowed' if response.allowed else 'denied'}")
    texts = [*(response.warnings or []), response.status.message if response.status else ""]
    assert max(len(text) for text in texts) < CLIPPED_BYTES, where
    if response.allowed:
        patched(pod, response)


# --- hostile reviews and bodies -----------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
REAL_REVIEWS = {path.name: json.loads(path.read_text()) for path in sorted(REVIEWS.glob("*.json"))}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from paths(child, (*prefix, index))


REAL_PATHS = [(name, path) for name, document in REAL_REVIEWS.items() for path in paths(document)]


def encode(document: Any) -> bytes:
    # The standard library, unlike orjson, also writes integers beyond 64 bits.
    return json.dumps(document).encode()


def answer_applies(body: bytes, response: httpx.Response) -> None:
    """Well-formed, and an allowed patch applies to the object sent."""
    admission = check_answer(body, response)
    if admission is not None and admission.allowed and admission.patch is not None:
        patched(json.loads(body)["request"]["object"], admission)


@fuzz(400)
@given(place=st.sampled_from(REAL_PATHS), value=json_values)
def test_any_value_anywhere_in_a_real_review_gets_a_well_formed_answer(
    webhook: Webhook, place: tuple[str, tuple[Any, ...]], value: Any
) -> None:
    name, path = place
    document = copy.deepcopy(REAL_REVIEWS[name])
    parent: Any = document
    for token in path[:-1]:
        parent = parent[token]
    parent[path[-1]] = value
    body = encode(document)
    answer_applies(body, webhook.post(body))


@fuzz(400)
@given(
    document=st.fixed_dictionaries(
        {},
        optional={
            "apiVersion": st.sampled_from(ADMISSION_VERSIONS) | json_values,
            "kind": json_values,
            "request": st.fixed_dictionaries(
                {},
                optional={
                    "uid": st.text(min_size=1) | json_values,
                    "kind": json_values,
                    "operation": st.sampled_from(["CREATE", "UPDATE"]) | json_values,
                    "namespace": json_values,
                    "object": json_values,
                },
            )
            | json_values,
        },
    )
)
def test_any_review_shape_gets_a_well_formed_answer(
    webhook: Webhook, document: dict[str, Any]
) -> None:
    body = encode(document)
    answer_applies(body, webhook.post(body))


@fuzz(300)
@given(body=st.binary(max_size=200))
def test_any_bytes_get_a_well_formed_answer(webhook: Webhook, body: bytes) -> None:
    check_answer(body, webhook.post(body))


def nested(depth: int, leaf: str = "[]") -> str:
    return "[" * depth + leaf + "]" * depth


FIXTURE = REAL_REVIEWS["pod-gpu-v1.json"]
HOSTILE_BODIES: dict[str, bytes] = {
    "empty": b"",
    "null": b"null",
    "a list": b"[]",
    "a string": b'"AdmissionReview"',
    "not UTF-8": b"\xff\xfe\x00garbage",
    "a lone surrogate uid": b'{"apiVersion": "admission.k8s.io/v1", "request": {"uid": "\\ud800"}}',
    "10,000 nested lists": nested(10_000).encode(),
    "a deeply nested object": b'{"apiVersion": "admission.k8s.io/v1", "request": {"uid": "deep", '
    b'"object": ' + nested(10_000).encode() + b"}}",
    "1,000 nested lists in a pod": b'{"apiVersion": "admission.k8s.io/v1", "request": {"uid": '
    b'"deep", "object": {"a": ' + nested(1_000).encode() + b"}}}",
    "a 1 MB uid": orjson.dumps(
        {"apiVersion": "admission.k8s.io/v1", "request": {"uid": "u" * 1_000_000}}
    ),
    "a number uid": orjson.dumps({"apiVersion": "admission.k8s.io/v1", "request": {"uid": 7}}),
    "an empty uid": orjson.dumps({"apiVersion": "admission.k8s.io/v1", "request": {"uid": ""}}),
    "no kind": orjson.dumps({"apiVersion": "admission.k8s.io/v1", "request": {"uid": "no-kind"}}),
    "apiVersion as a list": orjson.dumps(
        {"apiVersion": ["admission.k8s.io/v1"], "request": {"uid": "x"}}
    ),
    "a kind that is almost Pod": json.dumps(FIXTURE).replace("Pod", "P\u00f6d").encode(),
    "trailing bytes": json.dumps(FIXTURE).encode() + b"trailing",
}


@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_hostile_body_gets_a_well_formed_answer(webhook: Webhook, name: str) -> None:
    body = HOSTILE_BODIES[name]
    check_answer(body, webhook.post(body))
