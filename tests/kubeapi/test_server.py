"""The fake API server behaves as the Kubernetes API server does, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from tests.kubeapi.fixtures import kube_api, kubeconfig
from tests.kubeapi.server import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    FakeKubeApi,
    status_object,
)

__all__ = ["kube_api", "kubeconfig"]  # fixtures used by this module

NODES = "/api/v1/nodes"
WAIT = 10.0  # generous: a loaded 2-core machine


@pytest.fixture
async def http(kube_api: FakeKubeApi) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=kube_api.url, timeout=WAIT) as client:
        yield client


def patch_headers(content_type: str = MERGE_PATCH) -> dict[str, str]:
    return {"Content-Type": content_type}


class WatchStream:
    """Reads watch events from a streamed response, one JSON line each."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            while True:
                line = await anext(self._lines)
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    return event

    async def rest(self) -> list[dict[str, Any]]:
        """All remaining events until the server ends the stream."""
        events = []
        async with asyncio.timeout(WAIT):
            async for line in self._lines:
                if line.strip():
                    events.append(json.loads(line))
        return events


@contextlib.asynccontextmanager
async def watching(http: httpx.AsyncClient, **params: str) -> AsyncIterator[WatchStream]:
    """A watch on nodes with these query parameters."""
    async with http.stream("GET", NODES, params={"watch": "true", **params}) as response:
        assert response.status_code == 200
        yield WatchStream(response)


# -- reads ----------------------------------------------------------------------------------------


async def test_get_returns_the_object_with_kind_api_version_and_resource_version(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1", {"a": "1"})

    response = await http.get(f"{NODES}/n1")

    body = response.json()
    assert response.status_code == 200
    assert (body["kind"], body["apiVersion"]) == ("Node", "v1")
    assert body["metadata"]["labels"] == {"a": "1"}
    assert body["metadata"]["resourceVersion"] == str(kube_api.resource_version)
    assert body["metadata"]["uid"]


async def test_get_of_a_missing_object_answers_a_not_found_status(http: httpx.AsyncClient) -> None:
    response = await http.get(f"{NODES}/nope")

    assert response.status_code == 404
    assert response.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'nodes "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "kind": "nodes"},
        "code": 404,
    }


async def test_list_filters_by_field_selector_and_carries_the_list_resource_version(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    for name in ("a", "b", "c"):
        kube_api.add_node(name)

    body = (await http.get(NODES, params={"fieldSelector": "metadata.name=b"})).json()

    assert body["kind"] == "NodeList"
    assert [item["metadata"]["name"] for item in body["items"]] == ["b"]
    assert body["metadata"]["resourceVersion"] == str(kube_api.resource_version)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("role=gpu", ["a"]),
        ("role!=gpu", ["b", "c"]),
        ("role in (gpu,cpu)", ["a", "b"]),
        ("role notin (gpu)", ["b", "c"]),
        ("role", ["a", "b"]),
        ("!role", ["c"]),
        ("role=gpu,zone=x", ["a"]),
    ],
)
async def test_list_filters_by_label_selector(
    kube_api: FakeKubeApi, http: httpx.AsyncClient, selector: str, expected: list[str]
) -> None:
    kube_api.add_node("a", {"role": "gpu", "zone": "x"})
    kube_api.add_node("b", {"role": "cpu"})
    kube_api.add_node("c")

    body = (await http.get(NODES, params={"labelSelector": selector})).json()

    assert [item["metadata"]["name"] for item in body["items"]] == expected


async def test_list_pages_with_limit_and_continue_at_one_resource_version(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    for name in ("a", "b", "c", "d", "e"):
        kube_api.add_node(name)
    version = str(kube_api.resource_version)

    pages, token = [], None
    while True:
        params = {"limit": "2", **({"continue": token} if token else {})}
        body = (await http.get(NODES, params=params)).json()
        pages.append([item["metadata"]["name"] for item in body["items"]])
        assert body["metadata"]["resourceVersion"] == version
        token = body["metadata"].get("continue")
        if token is None:
            break
        kube_api.add_node(f"z{len(pages)}")  # moves the server on; the pages keep their version

    assert pages[:2] == [["a", "b"], ["c", "d"]]
    assert pages[2][0] == "e"


async def test_a_continue_token_older_than_the_history_is_expired(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    for name in ("a", "b", "c"):
        kube_api.add_node(name)
    token = (await http.get(NODES, params={"limit": "1"})).json()["metadata"]["continue"]
    kube_api.set_labels("a", {"x": "1"})
    kube_api.expire_history()

    response = await http.get(NODES, params={"limit": "1", "continue": token})

    assert (response.status_code, response.json()["reason"]) == (410, "Expired")


async def test_an_unsupported_field_selector_is_a_bad_request(http: httpx.AsyncClient) -> None:
    response = await http.get(NODES, params={"fieldSelector": "spec.unschedulable=true"})

    assert response.status_code == 400
    assert response.json()["reason"] == "BadRequest"


async def test_namespaced_resources_live_under_their_namespace_path(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.create("pods", {"metadata": {"name": "p", "namespace": "ns1"}})
    kube_api.create("pods", {"metadata": {"name": "p", "namespace": "ns2"}})

    in_ns1 = (await http.get("/api/v1/namespaces/ns1/pods")).json()["items"]
    everywhere = (await http.get("/api/v1/pods")).json()["items"]

    assert [p["metadata"]["namespace"] for p in in_ns1] == ["ns1"]
    assert [p["metadata"]["namespace"] for p in everywhere] == ["ns1", "ns2"]
    assert (await http.get("/api/v1/namespaces/ns2/pods/p")).status_code == 200


async def test_group_resources_are_served_under_apis(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.create("daemonsets.apps", {"metadata": {"name": "d", "namespace": "sys"}})

    body = (await http.get("/apis/apps/v1/namespaces/sys/daemonsets/d")).json()

    assert (body["kind"], body["apiVersion"]) == ("DaemonSet", "apps/v1")


# -- writes ---------------------------------------------------------------------------------------


async def test_merge_patch_adds_and_removes_labels_and_bumps_the_resource_version(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    before = kube_api.add_node("n1", {"old": "x"})

    response = await http.patch(
        f"{NODES}/n1",
        json={"metadata": {"labels": {"new": "y", "old": None}}},
        headers=patch_headers(),
    )

    assert response.status_code == 200
    assert response.json()["metadata"]["labels"] == {"new": "y"}
    assert int(response.json()["metadata"]["resourceVersion"]) > int(
        before["metadata"]["resourceVersion"]
    )
    assert kube_api.labels("n1") == {"new": "y"}


async def test_merge_patch_with_a_stale_resource_version_is_a_conflict_and_changes_nothing(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    stale = kube_api.add_node("n1")["metadata"]["resourceVersion"]
    kube_api.set_labels("n1", {"operator": "was-here"})

    response = await http.patch(
        f"{NODES}/n1",
        json={"metadata": {"resourceVersion": stale, "labels": {"mine": "1"}}},
        headers=patch_headers(),
    )

    assert response.status_code == 409
    assert response.json()["reason"] == "Conflict"
    assert "the object has been modified" in response.json()["message"]
    assert kube_api.labels("n1") == {"operator": "was-here"}


async def test_merge_patch_with_the_current_resource_version_is_applied(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    current = kube_api.add_node("n1")["metadata"]["resourceVersion"]

    response = await http.patch(
        f"{NODES}/n1",
        json={"metadata": {"resourceVersion": current, "labels": {"mine": "1"}}},
        headers=patch_headers(),
    )

    assert response.status_code == 200
    assert kube_api.labels("n1") == {"mine": "1"}


async def test_a_patch_that_changes_nothing_keeps_the_resource_version(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1", {"a": "1"})
    version = kube_api.resource_version

    response = await http.patch(
        f"{NODES}/n1", json={"metadata": {"labels": {"a": "1"}}}, headers=patch_headers()
    )

    assert response.json()["metadata"]["resourceVersion"] == str(version)
    assert kube_api.resource_version == version


async def test_strategic_merge_patch_merges_labels(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1", {"a": "1"})

    await http.patch(
        f"{NODES}/n1",
        json={"metadata": {"labels": {"b": "2"}}},
        headers=patch_headers(STRATEGIC_MERGE_PATCH),
    )

    assert kube_api.labels("n1") == {"a": "1", "b": "2"}


async def test_json_patch_is_applied_and_a_failing_test_operation_is_rejected(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1", {"a": "1"})
    add_b = [{"op": "add", "path": "/metadata/labels/b", "value": "2"}]
    wrong_test = [{"op": "test", "path": "/metadata/labels/a", "value": "other"}, *add_b]

    rejected = await http.patch(
        f"{NODES}/n1", content=json.dumps(wrong_test), headers=patch_headers(JSON_PATCH)
    )
    applied = await http.patch(
        f"{NODES}/n1", content=json.dumps(add_b), headers=patch_headers(JSON_PATCH)
    )

    assert rejected.status_code == 422
    assert applied.status_code == 200
    assert kube_api.labels("n1") == {"a": "1", "b": "2"}


async def test_an_unknown_patch_type_is_unsupported_media_type(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1")

    response = await http.patch(
        f"{NODES}/n1", content="{}", headers=patch_headers("application/apply-patch+yaml")
    )

    assert response.status_code == 415


async def test_put_with_a_stale_resource_version_is_a_conflict(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    node = kube_api.add_node("n1")
    kube_api.set_labels("n1", {"x": "1"})

    response = await http.put(f"{NODES}/n1", json=node)

    assert response.status_code == 409


async def test_create_answers_201_and_a_duplicate_answers_already_exists(
    http: httpx.AsyncClient,
) -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}

    first = await http.post(NODES, json=node)
    second = await http.post(NODES, json=node)

    assert first.status_code == 201
    assert second.status_code == 409
    assert second.json()["message"] == 'nodes "n1" already exists'


async def test_delete_answers_the_object_and_watchers_see_it_deleted(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1")

    async with watching(http, resourceVersion=str(kube_api.resource_version)) as stream:
        response = await http.delete(f"{NODES}/n1")
        event = await stream.next()

    assert (response.status_code, response.json()["metadata"]["name"]) == (200, "n1")
    assert (event["type"], event["object"]["metadata"]["name"]) == ("DELETED", "n1")
    assert kube_api.get("nodes", "n1") is None


async def test_name_is_immutable(kube_api: FakeKubeApi, http: httpx.AsyncClient) -> None:
    kube_api.add_node("n1")

    response = await http.patch(
        f"{NODES}/n1", json={"metadata": {"name": "n2"}}, headers=patch_headers()
    )

    assert response.status_code == 422
    assert kube_api.get("nodes", "n1") is not None


async def test_requests_are_recorded_with_query_headers_and_body(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1")

    await http.patch(
        f"{NODES}/n1",
        params={"fieldManager": "me"},
        json={"metadata": {"labels": {"a": "1"}}},
        headers=patch_headers(),
    )

    [recorded] = kube_api.requests_to("PATCH", f"{NODES}/n1")
    assert recorded.query == {"fieldManager": "me"}
    assert recorded.headers["content-type"] == MERGE_PATCH
    assert recorded.body == {"metadata": {"labels": {"a": "1"}}}
    assert recorded.status == 200


# -- watches --------------------------------------------------------------------------------------


async def test_watch_without_version_starts_with_current_state_then_streams_changes(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1")

    async with watching(http) as stream:
        initial = await stream.next()
        kube_api.set_labels("n1", {"a": "1"})
        change = await stream.next()

    assert (initial["type"], initial["object"]["metadata"]["name"]) == ("ADDED", "n1")
    assert change["type"] == "MODIFIED"
    assert change["object"]["metadata"]["labels"] == {"a": "1"}


async def test_watch_from_a_version_replays_only_later_events(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    version = kube_api.add_node("n1")["metadata"]["resourceVersion"]
    kube_api.set_labels("n1", {"a": "1"})
    kube_api.delete("nodes", "n1")

    async with watching(http, resourceVersion=version) as stream:
        events = [await stream.next(), await stream.next()]

    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]


async def test_watch_honours_the_field_selector(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("mine")
    kube_api.add_node("other")

    async with watching(
        http, fieldSelector="metadata.name=mine", resourceVersion=str(kube_api.resource_version)
    ) as stream:
        kube_api.set_labels("other", {"a": "1"})
        kube_api.set_labels("mine", {"b": "2"})
        event = await stream.next()

    assert event["object"]["metadata"]["name"] == "mine"


async def test_an_object_leaving_the_label_selector_arrives_as_deleted(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1", {"role": "gpu"})

    async with watching(http, labelSelector="role=gpu") as stream:
        await stream.next()  # initial ADDED
        kube_api.set_labels("n1", {"role": None})
        event = await stream.next()

    assert event["type"] == "DELETED"


async def test_watch_from_a_compacted_version_gets_a_410_expired_error_event(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    old = kube_api.add_node("n1")["metadata"]["resourceVersion"]
    kube_api.set_labels("n1", {"a": "1"})
    kube_api.expire_history()

    async with watching(http, resourceVersion=old) as stream:
        events = await stream.rest()

    [error] = events
    assert error["type"] == "ERROR"
    assert (error["object"]["code"], error["object"]["reason"]) == (410, "Expired")


async def test_expiring_history_ends_open_watches_with_410(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1")

    async with watching(http, resourceVersion=str(kube_api.resource_version)) as stream:
        await asyncio.sleep(0.1)
        kube_api.expire_history()
        events = await stream.rest()

    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]


async def test_history_beyond_its_window_is_compacted(http: httpx.AsyncClient) -> None:
    async with FakeKubeApi(history_size=2) as api:
        first = api.add_node("n1")["metadata"]["resourceVersion"]
        for value in ("1", "2", "3"):
            api.set_labels("n1", {"a": value})
        async with (
            httpx.AsyncClient(base_url=api.url, timeout=WAIT) as client,
            watching(client, resourceVersion=first) as stream,
        ):
            events = await stream.rest()

    assert events[0]["object"]["code"] == 410


async def test_bookmarks_carry_the_current_version_when_asked_for(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1")
    kube_api.add_node("n2")

    async with watching(
        http,
        fieldSelector="metadata.name=n1",
        resourceVersion=str(kube_api.resource_version),
        allowWatchBookmarks="true",
    ) as stream:
        kube_api.set_labels("n2", {"a": "1"})  # filtered out, but moves the version on
        kube_api.send_bookmarks()
        bookmark = await stream.next()

    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["object"]["kind"] == "Node"
    assert bookmark["object"]["metadata"]["resourceVersion"] == str(kube_api.resource_version)


async def test_bookmarks_are_sent_periodically(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    async with watching(http, resourceVersion="1", allowWatchBookmarks="true") as stream:
        event = await stream.next()  # the fixture's server sends them every 0.5 s

    assert event["type"] == "BOOKMARK"


async def test_no_bookmarks_without_allow_watch_bookmarks(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1")

    async with watching(http, resourceVersion=str(kube_api.resource_version)) as stream:
        kube_api.send_bookmarks()
        kube_api.set_labels("n1", {"a": "1"})
        event = await stream.next()

    assert event["type"] == "MODIFIED"


async def test_an_injected_error_event_is_delivered_and_ends_the_watch(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    async with watching(http, resourceVersion="1") as stream:
        await kube_api.wait_until(lambda: kube_api.open_watches == 1)
        kube_api.inject_watch_event({"type": "ERROR", "object": status_object(500, "etcd hiccup")})
        events = await stream.rest()

    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 500)]


async def test_timeout_seconds_ends_the_watch_cleanly(http: httpx.AsyncClient) -> None:
    async with watching(http, resourceVersion="1", timeoutSeconds="0.2") as stream:
        events = await stream.rest()

    assert events == []


async def test_dropped_watches_break_mid_stream(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    async with watching(http, resourceVersion="1") as stream:
        await kube_api.wait_until(lambda: kube_api.open_watches == 1)
        kube_api.drop_watches()
        with pytest.raises(httpx.RemoteProtocolError):
            await stream.rest()


# -- faults ---------------------------------------------------------------------------------------


async def test_fail_next_answers_that_many_matching_requests_with_the_status(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1")
    kube_api.fail_next(2, 500, method="GET")

    codes = [(await http.get(f"{NODES}/n1")).status_code for _ in range(3)]

    assert codes == [500, 500, 200]


async def test_fail_next_leaves_other_methods_alone(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1")
    kube_api.fail_next(1, 503, method="PATCH")

    got = await http.get(f"{NODES}/n1")
    patched = await http.patch(f"{NODES}/n1", json={}, headers=patch_headers())

    assert (got.status_code, patched.status_code) == (200, 503)
    assert patched.json()["reason"] == "ServiceUnavailable"


async def test_a_forbidden_verb_answers_403_naming_verb_and_resource_until_permitted(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    kube_api.add_node("n1")
    kube_api.forbid("patch", "nodes")

    denied = await http.patch(f"{NODES}/n1", json={}, headers=patch_headers())
    readable = await http.get(f"{NODES}/n1")
    kube_api.permit("patch", "nodes")
    allowed = await http.patch(f"{NODES}/n1", json={}, headers=patch_headers())

    assert denied.status_code == 403
    assert (
        'cannot patch resource "nodes" in API group "" at the cluster scope'
        in (denied.json()["message"])
    )
    assert (readable.status_code, allowed.status_code) == (200, 200)


async def test_before_next_runs_the_action_just_before_the_matching_request(
    kube_api: FakeKubeApi, http: httpx.AsyncClient
) -> None:
    version = kube_api.add_node("n1")["metadata"]["resourceVersion"]
    kube_api.before_next(
        lambda request: request.method == "PATCH",
        lambda: kube_api.set_labels("n1", {"operator": "first"}),
    )

    response = await http.patch(
        f"{NODES}/n1",
        json={"metadata": {"resourceVersion": version, "labels": {"mine": "1"}}},
        headers=patch_headers(),
    )

    assert response.status_code == 409
    assert kube_api.labels("n1") == {"operator": "first"}


async def test_stop_refuses_connections_and_start_serves_the_same_objects_on_the_same_port(
    kube_api: FakeKubeApi,
) -> None:
    kube_api.add_node("n1")
    port = kube_api.port

    await kube_api.stop()
    async with httpx.AsyncClient(base_url=kube_api.url, timeout=WAIT) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{NODES}/n1")
        await kube_api.start()
        response = await client.get(f"{NODES}/n1")

    assert kube_api.port == port
    assert response.status_code == 200


async def test_wait_until_returns_once_a_write_makes_the_condition_true(
    kube_api: FakeKubeApi,
) -> None:
    kube_api.add_node("n1")
    asyncio.get_running_loop().call_later(0.05, lambda: kube_api.set_labels("n1", {"a": "1"}))

    waited = await kube_api.wait_until(lambda: "a" in kube_api.labels("n1"))

    assert waited > 0


async def test_wait_until_times_out_when_nothing_changes(kube_api: FakeKubeApi) -> None:
    kube_api.add_node("n1")

    with pytest.raises(TimeoutError):
        await kube_api.wait_until(lambda: "a" in kube_api.labels("n1"), within=0.1)


# -- a real client --------------------------------------------------------------------------------


async def test_lightkube_reads_patches_and_watches_through_a_kubeconfig(
    kube_api: FakeKubeApi, kubeconfig: Path
) -> None:
    kube_api.add_node("n1")
    client = AsyncClient(KubeConfig.from_file(kubeconfig))
    try:
        node = await client.get(Node, "n1")
        await client.patch(
            Node,
            "n1",
            {"metadata": {"labels": {"a": "1"}}},
            patch_type=PatchType.MERGE,
        )
        events = client.watch(Node, resource_version=node.metadata.resourceVersion)  # type: ignore[union-attr]
        async with asyncio.timeout(WAIT):
            event_type, changed = await anext(aiter(events))
    finally:
        await client.close()

    assert event_type == "MODIFIED"
    assert changed.metadata is not None
    assert changed.metadata.labels == {"a": "1"}
