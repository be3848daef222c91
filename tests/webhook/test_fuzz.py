"""Hostile and malformed reviews: never a 5xx, always a well-formed answer.

Thousands of cases go to the ASGI app in process; a smaller batch goes to the real process over
TLS. The contract checked for every case: 400 with a JSON error body when no uid can be read, else
200 with an AdmissionReview that echoes the uid.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trustme
from gvirtus_kai_webhook.models import ADMISSION_VERSIONS, AdmissionReviewResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dnsserver import LoopbackDnsServer
from tests.tlsfiles import SecretVolume, client_context, serving_cert
from tests.webhook.conftest import BACKEND_ADDRESS, InProcessWebhook, review_document, settings_for
from tests.webhookproc import BACKEND_HOST, WebhookProcess, api_server_client, start_webhook

FIXTURE = review_document()
FUZZ_SETTINGS = settings(
    max_examples=400,
    deadline=None,  # a loaded CI machine must not turn slowness into failures
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

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


def encode(document: Any) -> bytes:
    # The standard library, unlike orjson, also writes integers beyond 64 bits.
    return json.dumps(document).encode()


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


def check_answer(body: bytes, status: int, content_type: str, content: bytes) -> None:
    assert content_type == "application/json"
    uid = readable_uid(body)
    if uid is None:
        assert status == 400, content[:300]
        error = json.loads(content)
        assert error["code"] == 400
        assert isinstance(error["message"], str)
        assert error["message"]
        return
    assert status == 200, content[:300]
    review = AdmissionReviewResponse.model_validate_json(content)
    assert review.response.uid == uid
    if not review.response.allowed:
        assert review.response.status is not None
        assert review.response.status.message
        # A 500 denial means an unexpected exception: hostile input must be named, not crash.
        assert review.response.status.code != 500, review.response.status.message
    if review.response.patch is not None:
        assert isinstance(json.loads(base64.b64decode(review.response.patch)), list)


# --- generated mutations of the real fixture --------------------------------------------------


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, (*prefix, index))


FIXTURE_PATHS = [path for path in paths(FIXTURE) if path]
HOSTILE_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5e308,
    "",
    "x" * 100_000,
    "\u202e\u0000😀\ufffd",
    [],
    {},
    [None] * 50,
    {"": None},
    {"kind": "Pod"},
    "CREATE",
    "Pod",
]


def mutated_fixture(rng: random.Random) -> bytes:
    """The fixture with one to three random edits: replaced, wrong-typed or deleted values."""
    document = copy.deepcopy(FIXTURE)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(FIXTURE_PATHS)
        parent: Any = document
        try:
            for token in path[:-1]:
                parent = parent[token]
            if rng.random() < 0.25 and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or retyped this path
    return encode(document)


def nested(depth: int, leaf: str = "[]") -> str:
    return "[" * depth + leaf + "]" * depth


HOSTILE_BODIES: list[bytes] = [
    b"",
    b"null",
    b"[]",
    b'"AdmissionReview"',
    b"\xff\xfe\x00garbage",
    b'{"apiVersion": "admission.k8s.io/v1", "request": {"uid": "\\ud800"}}',
    nested(10_000).encode(),
    b'{"apiVersion": "admission.k8s.io/v1", "request": {"uid": "deep", "object": '
    + nested(10_000).encode()
    + b"}}",
    b'{"apiVersion": "admission.k8s.io/v1", "request": {"uid": "deep", "object": {"a": '
    + nested(1_000).encode()
    + b"}}}",
    orjson.dumps({"apiVersion": "admission.k8s.io/v1", "request": {"uid": "u" * 1_000_000}}),
    orjson.dumps({"apiVersion": "admission.k8s.io/v1", "request": {"uid": 7}}),
    orjson.dumps({"apiVersion": "admission.k8s.io/v1", "request": {"uid": ""}}),
    orjson.dumps({"apiVersion": "admission.k8s.io/v1", "request": {"uid": "no-kind"}}),
    orjson.dumps({"apiVersion": ["admission.k8s.io/v1"], "request": {"uid": "x"}}),
    json.dumps(FIXTURE).replace("Pod", "P\u00f6d").encode(),
    json.dumps(FIXTURE).encode() + b"trailing",
]


# --- in process --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_runner() -> Iterator[tuple[asyncio.Runner, httpx.AsyncClient]]:
    """A long-lived loop and client, so thousands of cases do not each build a webhook."""
    with LoopbackDnsServer() as dns, asyncio.Runner() as runner:
        dns.set_a(BACKEND_HOST, BACKEND_ADDRESS, ttl=3600)
        webhook = InProcessWebhook(settings_for(dns))
        client = webhook.client()
        yield runner, client
        runner.run(client.aclose())


def post_in_process(app: tuple[asyncio.Runner, httpx.AsyncClient], body: bytes) -> None:
    runner, client = app
    response = runner.run(client.post("/mutate", content=body))
    check_answer(body, response.status_code, response.headers["content-type"], response.content)


@pytest.mark.parametrize("index", range(len(HOSTILE_BODIES)))
def test_hostile_body_gets_a_well_formed_answer(
    app_runner: tuple[asyncio.Runner, httpx.AsyncClient], index: int
) -> None:
    post_in_process(app_runner, HOSTILE_BODIES[index])


def test_thousands_of_mutated_fixtures_get_well_formed_answers(
    app_runner: tuple[asyncio.Runner, httpx.AsyncClient],
) -> None:
    rng = random.Random(20_240_601)
    for _ in range(2_000):
        post_in_process(app_runner, mutated_fixture(rng))


@FUZZ_SETTINGS
@given(path=st.sampled_from(FIXTURE_PATHS), value=json_values)
def test_any_value_anywhere_in_the_fixture_gets_a_well_formed_answer(
    app_runner: tuple[asyncio.Runner, httpx.AsyncClient], path: tuple[Any, ...], value: Any
) -> None:
    document = copy.deepcopy(FIXTURE)
    parent: Any = document
    for token in path[:-1]:
        parent = parent[token]
    parent[path[-1]] = value
    post_in_process(app_runner, encode(document))


@FUZZ_SETTINGS
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
    app_runner: tuple[asyncio.Runner, httpx.AsyncClient], document: dict[str, Any]
) -> None:
    post_in_process(app_runner, encode(document))


@FUZZ_SETTINGS
@given(body=st.binary(max_size=200))
def test_any_bytes_get_a_well_formed_answer(
    app_runner: tuple[asyncio.Runner, httpx.AsyncClient], body: bytes
) -> None:
    post_in_process(app_runner, body)


# --- over the real TLS socket ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_webhook(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[WebhookProcess, httpx.Client]]:
    ca = trustme.CA()
    volume = SecretVolume(Path(tmp_path_factory.mktemp("fuzz")) / "tls")
    volume.write(serving_cert(ca))
    with LoopbackDnsServer() as dns:
        dns.set_a(BACKEND_HOST, BACKEND_ADDRESS, ttl=3600)
        webhook = start_webhook(
            {
                "TLS_CERT_FILE": str(volume.cert_file),
                "TLS_KEY_FILE": str(volume.key_file),
                "DNS_NAMESERVERS": dns.nameserver,
                "LOG_LEVEL": "error",
            }
        )
        try:
            webhook.wait_ready(client_context(ca))
            with api_server_client(client_context(ca)) as client:
                yield webhook, client
        finally:
            webhook.stop()


def test_hostile_and_mutated_reviews_over_tls_get_well_formed_answers(
    real_webhook: tuple[WebhookProcess, httpx.Client],
) -> None:
    webhook, client = real_webhook
    rng = random.Random(7)
    bodies = HOSTILE_BODIES + [mutated_fixture(rng) for _ in range(300)]
    for body in bodies:
        response = webhook.post(client, "/mutate", body)
        check_answer(body, response.status_code, response.headers["content-type"], response.content)
    assert webhook.get(client, "/healthz").status_code == 200  # and it is still up
