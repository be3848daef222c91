"""The labeler's control loop, in-process, against the real API server (through the fault proxy,
which injects only the faults a test asks for)."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest
from gvirtus_kai_common.backoff import Backoff
from gvirtus_kai_common.kube import ApiFailure
from gvirtus_kai_labeler.controller import Labeler, NodeNotFound
from gvirtus_kai_labeler.metrics import Metrics
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Node
from prometheus_client import CollectorRegistry

from tests.cluster.faultproxy import FaultProxy, RecordedRequest, status_object
from tests.labeler.conftest import NODE_VERBS, Identity, StartLabeler
from tests.labeler.support import BACKEND, DEFAULTS, FRONTEND, WAIT, Nodes, metric

NODES_PATH = "/api/v1/nodes"
MERGE_PATCH = "application/merge-patch+json"


async def watching(kube_api: FaultProxy, count: int = 1) -> None:
    """Until the labeler has an open watch: from then on, changes reach it as events."""
    await kube_api.wait_until(lambda: kube_api.open_watches == count, within=WAIT)


async def running_on_a_labelled_node(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler
) -> Labeler:
    """A labeler that has labelled node n1 and now watches it: where the tests of a running
    labeler start."""
    await nodes.add("n1")
    labeler = await start_labeler()
    await nodes.has_labels("n1", DEFAULTS)
    await watching(kube_api)
    return labeler


def patches(kube_api: FaultProxy, nodes: Nodes, node: str = "n1") -> list[RecordedRequest]:
    return kube_api.requests_to("PATCH", f"{NODES_PATH}/{nodes.name(node)}")


def lists(kube_api: FaultProxy) -> list[RecordedRequest]:
    return [r for r in kube_api.requests_to("GET", NODES_PATH) if not r.is_watch]


def watches(kube_api: FaultProxy) -> list[RecordedRequest]:
    return [r for r in kube_api.requests_to("GET", NODES_PATH) if r.is_watch]


def version(node: Node) -> str:
    assert node.metadata is not None
    assert node.metadata.resourceVersion is not None
    return node.metadata.resourceVersion


# -- what gets labelled -------------------------------------------------------------------------


async def test_missing_labels_are_added_with_their_defaults(
    nodes: Nodes, start_labeler: StartLabeler
) -> None:
    await nodes.add("n1", {"kubernetes.io/hostname": "n1"})

    await start_labeler()

    await nodes.has_labels("n1", DEFAULTS)
    assert await nodes.labels("n1") == {"kubernetes.io/hostname": "n1", **DEFAULTS}


async def test_an_operators_backend_opt_in_is_never_changed(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler
) -> None:
    await nodes.add("n1", {BACKEND: "true"})

    await start_labeler()

    await nodes.has_labels("n1", {FRONTEND: "true"})
    assert (await nodes.labels("n1"))[BACKEND] == "true"
    [patch] = patches(kube_api, nodes)
    assert BACKEND not in patch.body["metadata"]["labels"]


async def test_existing_values_even_empty_or_unusual_ones_are_left_alone(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler
) -> None:
    await nodes.add("n1", {FRONTEND: "", BACKEND: "maybe"})

    await start_labeler()
    await watching(kube_api)

    assert await nodes.labels("n1") == {FRONTEND: "", BACKEND: "maybe"}
    assert patches(kube_api, nodes) == []


async def test_each_write_is_a_merge_patch_conditional_on_the_version_read(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler
) -> None:
    read = version(await nodes.add("n1"))

    await start_labeler()
    await nodes.has_labels("n1", DEFAULTS)
    await kube_api.settled()

    [patch] = patches(kube_api, nodes)
    assert patch.headers["content-type"] == MERGE_PATCH
    assert patch.body == {"metadata": {"resourceVersion": read, "labels": DEFAULTS}}
    assert patch.query["fieldManager"] == "gvirtus-labeler"
    assert patch.status == 200


async def test_custom_label_keys_and_values_are_applied(
    nodes: Nodes, start_labeler: StartLabeler
) -> None:
    wanted = {"example.com/accelerator-pool": "remote", "team": ""}
    await nodes.add("n1", {"team": "ml"})

    await start_labeler(wanted=wanted)

    await nodes.has_labels("n1", {"example.com/accelerator-pool": "remote"})
    assert await nodes.labels("n1") == {"example.com/accelerator-pool": "remote", "team": "ml"}


async def test_per_node_mode_reads_and_writes_only_its_own_node(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler
) -> None:
    await nodes.add("n1")
    await nodes.add("other")

    await start_labeler()
    await nodes.has_labels("n1", DEFAULTS)
    await watching(kube_api)

    assert await nodes.labels("other") == {}
    selector = f"metadata.name={nodes.name('n1')}"
    assert all(r.query["fieldSelector"] == selector for r in lists(kube_api))
    assert all(r.query["fieldSelector"] == selector for r in watches(kube_api))


async def test_a_node_registering_after_start_is_labelled(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler
) -> None:
    await start_labeler()
    await watching(kube_api)

    await nodes.add("n1")

    await nodes.has_labels("n1", DEFAULTS)


# -- reacting to changes --------------------------------------------------------------------------


async def test_a_deleted_label_is_restored_from_the_watch_event_without_listing_again(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler
) -> None:
    await running_on_a_labelled_node(kube_api, nodes, start_labeler)

    removed = await nodes.remove_label("n1", FRONTEND)
    # The restore target is 1 s (bench/labeler.py measures it); this bound only stops a hang.
    await nodes.has_labels("n1", {FRONTEND: "true"})

    restore = patches(kube_api, nodes)[-1]
    assert restore.body == {
        "metadata": {"resourceVersion": version(removed), "labels": {FRONTEND: "true"}}
    }
    assert len(lists(kube_api)) == 1
    assert len(watches(kube_api)) == 1


async def test_a_concurrent_operator_write_wins(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    await nodes.add("n1")
    # The operator opts the node in as a backend between the labeler's read and its write; the
    # API server then refuses the labeler's write, conditional on the version it read (409).
    kube_api.before_next(
        lambda request: request.method == "PATCH",
        lambda: nodes.set_labels("n1", {BACKEND: "true"}),
    )

    await start_labeler()

    await nodes.has_labels("n1", {FRONTEND: "true"})
    await watching(kube_api)
    assert (await nodes.labels("n1"))[BACKEND] == "true"
    await kube_api.settled()
    first, *later = patches(kube_api, nodes)
    assert first.status == 409
    # Events older than the operator's write may still arrive on the watch; their patches are
    # refused the same way. Exactly one write lands, and it adds only what was missing.
    [written] = [p for p in later if p.status == 200]
    assert written.body["metadata"]["labels"] == {FRONTEND: "true"}
    assert {p.status for p in later} <= {200, 409}
    conflicts = sum(1 for p in patches(kube_api, nodes) if p.status == 409)
    # Each refusal is counted once the labeler has handled it, a moment after the answer.
    await kube_api.wait_until(
        lambda: metric(registry, "gvirtus_labeler_conflicts_total") == conflicts, within=WAIT
    )


async def test_an_operator_setting_the_label_while_it_is_missing_keeps_its_value(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler
) -> None:
    await nodes.add("n1", DEFAULTS)
    await start_labeler()
    await watching(kube_api)
    # The operator sets the value right after removing it, before the labeler's reaction lands.
    kube_api.before_next(
        lambda request: request.method == "PATCH",
        lambda: nodes.set_labels("n1", {BACKEND: "true"}),
    )

    await nodes.remove_label("n1", BACKEND)
    # The labeler reacts to the removal with a write against its version: refused, it reads again.
    await kube_api.wait_until(
        lambda: bool(kube_api.requests_to("GET", f"{NODES_PATH}/{nodes.name('n1')}")), within=WAIT
    )
    await watching(kube_api)
    await kube_api.settled()

    assert [p.status for p in patches(kube_api, nodes)] == [409]
    assert (await nodes.labels("n1"))[BACKEND] == "true"


# -- failures -------------------------------------------------------------------------------------


async def test_server_errors_are_retried_until_the_label_is_written(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    await nodes.add("n1")
    kube_api.fail_next(3, 500, method="PATCH")

    await start_labeler()

    await nodes.has_labels("n1", DEFAULTS)
    await kube_api.settled()
    assert [p.status for p in patches(kube_api, nodes)] == [500, 500, 500, 200]
    assert metric(registry, "gvirtus_labeler_api_errors_total", verb="patch", code="500") == 3


async def test_a_failed_restore_is_retried_from_the_same_watch_event(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler
) -> None:
    await running_on_a_labelled_node(kube_api, nodes, start_labeler)
    kube_api.fail_next(2, 503, method="PATCH")

    await nodes.remove_label("n1", FRONTEND)

    await nodes.has_labels("n1", {FRONTEND: "true"})
    await kube_api.settled()
    assert [p.status for p in patches(kube_api, nodes)][-3:] == [503, 503, 200]
    assert len(lists(kube_api)) == 1


async def test_the_api_going_down_and_coming_back_is_survived(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    labeler = await running_on_a_labelled_node(kube_api, nodes, start_labeler)

    await kube_api.stop()
    await nodes.remove_label("n1", FRONTEND)  # changed while the labeler cannot see it
    await asyncio.sleep(1.0)  # several failed reconnects
    await kube_api.start()

    await nodes.has_labels("n1", {FRONTEND: "true"})
    assert labeler.healthy()
    assert metric(registry, "gvirtus_labeler_api_errors_total", verb="watch", code="connection") > 1
    assert (
        metric(registry, "gvirtus_labeler_watch_restarts_total", resource="nodes", reason="error")
        > 1
    )


async def test_a_dropped_watch_resumes_from_the_last_seen_version(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler
) -> None:
    await running_on_a_labelled_node(kube_api, nodes, start_labeler)
    # The labeler's own patch comes back on its watch: the last version it has seen.
    await kube_api.wait_until(lambda: kube_api.delivered_versions(), within=WAIT)
    seen = kube_api.delivered_versions()[-1]

    kube_api.drop_watches()
    await kube_api.wait_until(lambda: len(watches(kube_api)) == 2, within=WAIT)
    await watching(kube_api)
    await nodes.remove_label("n1", FRONTEND)

    await nodes.has_labels("n1", {FRONTEND: "true"})
    assert watches(kube_api)[1].query["resourceVersion"] == seen
    assert len(lists(kube_api)) == 1


async def test_an_error_event_inside_the_watch_is_retried_from_the_last_version(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    await running_on_a_labelled_node(kube_api, nodes, start_labeler)

    kube_api.inject_watch_event({"type": "ERROR", "object": status_object(500, "etcd hiccup")})
    await kube_api.wait_until(lambda: len(watches(kube_api)) == 2, within=WAIT)
    await watching(kube_api)
    await nodes.remove_label("n1", FRONTEND)

    await nodes.has_labels("n1", {FRONTEND: "true"})
    assert metric(registry, "gvirtus_labeler_api_errors_total", verb="watch", code="500") == 1
    assert len(lists(kube_api)) == 1


async def test_an_expired_watch_lists_again_and_resumes(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    await running_on_a_labelled_node(kube_api, nodes, start_labeler)

    kube_api.expire_watches()
    await kube_api.wait_until(lambda: len(lists(kube_api)) == 2, within=WAIT)
    await watching(kube_api)
    await nodes.remove_label("n1", BACKEND)

    await nodes.has_labels("n1", {BACKEND: "false"})
    assert (
        metric(registry, "gvirtus_labeler_watch_restarts_total", resource="nodes", reason="expired")
        == 1
    )
    assert metric(registry, "gvirtus_labeler_api_errors_total", verb="watch", code="410") == 0


async def test_changes_missed_beyond_the_history_window_are_caught_by_listing_again(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler
) -> None:
    await running_on_a_labelled_node(kube_api, nodes, start_labeler)

    await kube_api.stop()
    await nodes.remove_label("n1", FRONTEND)
    kube_api.expire_next_watch()  # the removal is no longer replayable
    await kube_api.start()

    await nodes.has_labels("n1", {FRONTEND: "true"})
    assert len(lists(kube_api)) == 2


async def test_forbidden_names_the_missing_permission_and_is_retried(
    restricted_identity: Identity,
    kube_api: FaultProxy,
    nodes: Nodes,
    start_labeler: StartLabeler,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    await nodes.add("n1")

    await start_labeler()
    await kube_api.wait_until(
        lambda: metric(registry, "gvirtus_labeler_api_errors_total", verb="patch", code="403") >= 2,
        within=WAIT,
    )
    restricted_identity.set_verbs(NODE_VERBS)  # the operator grants the missing verb

    await nodes.has_labels("n1", DEFAULTS)
    assert metric(registry, "gvirtus_labeler_api_errors_total", verb="patch", code="403") >= 2
    hints = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert hints
    assert hints[0].getMessage() == (
        "forbidden: grant 'patch' on 'nodes' to the labeler's ServiceAccount"
    )
    assert 'cannot patch resource "nodes"' in hints[0].__dict__["error"]


async def test_a_long_lived_watch_is_reopened_each_window_without_listing(
    kube_api: FaultProxy, nodes: Nodes, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    await nodes.add("n1")
    await start_labeler(watch_window=0.2)
    await nodes.has_labels("n1", DEFAULTS)

    await kube_api.wait_until(lambda: len(watches(kube_api)) >= 3, within=WAIT)

    assert len(lists(kube_api)) == 1
    assert (
        metric(registry, "gvirtus_labeler_watch_restarts_total", resource="nodes", reason="window")
        >= 2
    )


async def test_every_added_label_is_logged_with_node_key_and_value(
    kube_api: FaultProxy,
    nodes: Nodes,
    start_labeler: StartLabeler,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gvirtus_kai_labeler")
    await nodes.add("n1")

    await start_labeler()
    await watching(kube_api)  # opened once the initial labelling is done

    added = [
        (r.__dict__["node"], r.__dict__["key"], r.__dict__["value"])
        for r in caplog.records
        if r.getMessage() == "label added"
    ]
    n1 = nodes.name("n1")
    assert sorted(added) == [(n1, BACKEND, "false"), (n1, FRONTEND, "true")]


# -- all nodes ------------------------------------------------------------------------------------


async def test_all_nodes_mode_lists_in_pages_and_labels_many_nodes_through_one_watch(
    kube_api: FaultProxy,
    nodes: Nodes,
    admin: AsyncClient,
    start_labeler: StartLabeler,
    registry: CollectorRegistry,
) -> None:
    shorts = [f"node-{i:03d}" for i in range(150)]
    for short in shorts:
        await nodes.add(short, {BACKEND: "true"} if short.endswith("7") else {})
    # The rest of the cluster's nodes count for the pages, and for the labels if they lack one.
    listed = [node async for node in admin.list(Node)]
    lacking = sum(1 for n in listed if n.metadata and FRONTEND not in (n.metadata.labels or {}))

    await start_labeler(node=None, list_chunk_size=40)
    for short in shorts:
        await nodes.has_labels(short, {FRONTEND: "true"})
    await watching(kube_api)
    assert metric(registry, "gvirtus_labeler_labels_added_total", key=FRONTEND) == lacking
    await nodes.add("late-joiner")
    await nodes.remove_label("node-042", FRONTEND)

    await nodes.has_labels("late-joiner", DEFAULTS)
    await nodes.has_labels("node-042", {FRONTEND: "true"})
    assert (await nodes.labels("node-017"))[BACKEND] == "true"
    pages = math.ceil(len(listed) / 40)
    assert [r.query.get("continue") is None for r in lists(kube_api)] == [True] + [False] * (
        pages - 1
    )
    assert len(watches(kube_api)) == 1
    assert "fieldSelector" not in watches(kube_api)[0].query


# -- health and --once ----------------------------------------------------------------------------


async def test_health_follows_the_control_loop(
    kube_api: FaultProxy, nodes: Nodes, client: AsyncClient, registry: CollectorRegistry
) -> None:
    await nodes.add("n1")
    labeler = Labeler(client, DEFAULTS, Metrics(registry), node_name=nodes.name("n1"))
    assert not labeler.healthy()

    task = asyncio.create_task(labeler.run())
    await watching(kube_api)
    running = labeler.healthy()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert running
    assert not labeler.healthy()


def once_labeler(client: AsyncClient, node_name: str | None) -> Labeler:
    return Labeler(
        client,
        DEFAULTS,
        Metrics(CollectorRegistry()),
        node_name=node_name,
        backoff=Backoff(initial=0.01, maximum=0.05),
    )


async def test_label_once_adds_what_is_missing_and_returns_the_count(
    kube_api: FaultProxy, nodes: Nodes, client: AsyncClient
) -> None:
    await nodes.add("n1", {BACKEND: "true"})

    added = await once_labeler(client, nodes.name("n1")).label_once()

    assert added == 1
    assert await nodes.labels("n1") == {BACKEND: "true", FRONTEND: "true"}
    assert watches(kube_api) == []


async def test_label_once_retries_transient_failures(
    kube_api: FaultProxy, nodes: Nodes, client: AsyncClient
) -> None:
    await nodes.add("n1")
    kube_api.fail_next(2, 500)

    added = await once_labeler(client, nodes.name("n1")).label_once(attempts=3)

    assert added == 2


async def test_label_once_gives_up_after_its_attempts(
    kube_api: FaultProxy, nodes: Nodes, client: AsyncClient
) -> None:
    await nodes.add("n1")
    kube_api.fail_next(3, 500)

    with pytest.raises(ApiFailure) as failure:
        await once_labeler(client, nodes.name("n1")).label_once(attempts=3)

    assert (failure.value.verb, failure.value.code) == ("list", 500)
    assert len(kube_api.requests) == 3


async def test_label_once_on_a_missing_node_raises_node_not_found(
    nodes: Nodes, client: AsyncClient
) -> None:
    with pytest.raises(NodeNotFound, match=f"'{nodes.name('n1')}' not found"):
        await once_labeler(client, nodes.name("n1")).label_once()
