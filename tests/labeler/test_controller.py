"""The labeler's control loop, in-process, against the fake API server over real HTTP."""

from __future__ import annotations

import asyncio
import logging

import pytest
from gvirtus_kai_common.backoff import Backoff
from gvirtus_kai_labeler.controller import ApiFailure, Labeler, NodeNotFound
from gvirtus_kai_labeler.metrics import Metrics
from lightkube import AsyncClient
from prometheus_client import CollectorRegistry

from tests.kubeapi.server import MERGE_PATCH, FakeKubeApi, RecordedRequest, status_object
from tests.labeler.conftest import StartLabeler
from tests.labeler.support import BACKEND, DEFAULTS, FRONTEND, WAIT, metric

NODE = "/api/v1/nodes"


async def watching(kube_api: FakeKubeApi, count: int = 1) -> None:
    """Until the labeler has an open watch: from then on, changes reach it as events."""
    await kube_api.wait_until(lambda: kube_api.open_watches == count, within=WAIT)


async def has_labels(kube_api: FakeKubeApi, node: str, expected: dict[str, str]) -> None:
    await kube_api.wait_until(
        lambda: expected.items() <= kube_api.labels(node).items(), within=WAIT
    )


async def running_on_a_labelled_node(kube_api: FakeKubeApi, start_labeler: StartLabeler) -> Labeler:
    """A labeler that has labelled node n1 and now watches it: where the tests of a running
    labeler start."""
    kube_api.add_node("n1")
    labeler = await start_labeler()
    await has_labels(kube_api, "n1", DEFAULTS)
    await watching(kube_api)
    return labeler


def patches(kube_api: FakeKubeApi, node: str = "n1") -> list[RecordedRequest]:
    return kube_api.requests_to("PATCH", f"{NODE}/{node}")


def lists(kube_api: FakeKubeApi) -> list[RecordedRequest]:
    return [r for r in kube_api.requests_to("GET", NODE) if not r.is_watch]


def watches(kube_api: FakeKubeApi) -> list[RecordedRequest]:
    return [r for r in kube_api.requests_to("GET", NODE) if r.is_watch]


# -- what gets labelled -------------------------------------------------------------------------


async def test_missing_labels_are_added_with_their_defaults(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    kube_api.add_node("n1", {"kubernetes.io/hostname": "n1"})

    await start_labeler()

    await has_labels(kube_api, "n1", DEFAULTS)
    assert kube_api.labels("n1") == {"kubernetes.io/hostname": "n1", **DEFAULTS}


async def test_an_operators_backend_opt_in_is_never_changed(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    kube_api.add_node("n1", {BACKEND: "true"})

    await start_labeler()

    await has_labels(kube_api, "n1", {FRONTEND: "true"})
    assert kube_api.labels("n1")[BACKEND] == "true"
    [patch] = patches(kube_api)
    assert BACKEND not in patch.body["metadata"]["labels"]


async def test_existing_values_even_empty_or_unusual_ones_are_left_alone(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    kube_api.add_node("n1", {FRONTEND: "", BACKEND: "maybe"})

    await start_labeler()
    await watching(kube_api)

    assert kube_api.labels("n1") == {FRONTEND: "", BACKEND: "maybe"}
    assert patches(kube_api) == []


async def test_each_write_is_a_merge_patch_conditional_on_the_version_read(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    version = kube_api.add_node("n1")["metadata"]["resourceVersion"]

    await start_labeler()
    await has_labels(kube_api, "n1", DEFAULTS)

    [patch] = patches(kube_api)
    assert patch.headers["content-type"] == MERGE_PATCH
    assert patch.body == {"metadata": {"resourceVersion": version, "labels": DEFAULTS}}
    assert patch.query["fieldManager"] == "gvirtus-labeler"


async def test_custom_label_keys_and_values_are_applied(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    wanted = {"example.com/accelerator-pool": "remote", "team": ""}
    kube_api.add_node("n1", {"team": "ml"})

    await start_labeler(wanted=wanted)

    await has_labels(kube_api, "n1", {"example.com/accelerator-pool": "remote"})
    assert kube_api.labels("n1") == {"example.com/accelerator-pool": "remote", "team": "ml"}
    assert FRONTEND not in kube_api.labels("n1")


async def test_per_node_mode_reads_and_writes_only_its_own_node(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    kube_api.add_node("n1")
    kube_api.add_node("other")

    await start_labeler(node_name="n1")
    await has_labels(kube_api, "n1", DEFAULTS)
    await watching(kube_api)

    assert kube_api.labels("other") == {}
    assert all(r.query["fieldSelector"] == "metadata.name=n1" for r in lists(kube_api))
    assert all(r.query["fieldSelector"] == "metadata.name=n1" for r in watches(kube_api))


async def test_a_node_registering_after_start_is_labelled(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    await start_labeler(node_name="n1")
    await watching(kube_api)

    kube_api.add_node("n1")

    await has_labels(kube_api, "n1", DEFAULTS)


# -- reacting to changes --------------------------------------------------------------------------


async def test_a_deleted_label_is_restored_from_the_watch_event_without_listing_again(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    await running_on_a_labelled_node(kube_api, start_labeler)

    removed = kube_api.remove_label("n1", FRONTEND)
    # The restore target is 1 s (bench/labeler.py measures it); this bound only stops a hang.
    await has_labels(kube_api, "n1", {FRONTEND: "true"})

    restore = patches(kube_api)[-1]
    assert restore.body == {
        "metadata": {
            "resourceVersion": removed["metadata"]["resourceVersion"],
            "labels": {FRONTEND: "true"},
        }
    }
    assert len(lists(kube_api)) == 1
    assert len(watches(kube_api)) == 1


async def test_a_concurrent_operator_write_wins(
    kube_api: FakeKubeApi, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    kube_api.add_node("n1")
    # The operator opts the node in as a backend between the labeler's read and its write.
    kube_api.before_next(
        lambda request: request.method == "PATCH",
        lambda: kube_api.set_labels("n1", {BACKEND: "true"}),
    )

    await start_labeler()

    await has_labels(kube_api, "n1", {FRONTEND: "true"})
    await watching(kube_api)
    assert kube_api.labels("n1")[BACKEND] == "true"
    first, second = patches(kube_api)
    assert first.status == 409
    assert second.body["metadata"]["labels"] == {FRONTEND: "true"}
    assert metric(registry, "gvirtus_labeler_conflicts_total") == 1


async def test_an_operator_setting_the_label_while_it_is_missing_keeps_its_value(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    kube_api.add_node("n1", DEFAULTS)
    await start_labeler()
    await watching(kube_api)

    kube_api.remove_label("n1", BACKEND)
    kube_api.set_labels("n1", {BACKEND: "true"})
    # The labeler reacts to the removal with a write against its version: refused, it reads again.
    await kube_api.wait_until(lambda: bool(kube_api.requests_to("GET", f"{NODE}/n1")), within=WAIT)
    await watching(kube_api)

    assert [p.status for p in patches(kube_api)] == [409]
    assert kube_api.labels("n1")[BACKEND] == "true"


# -- failures -------------------------------------------------------------------------------------


async def test_server_errors_are_retried_until_the_label_is_written(
    kube_api: FakeKubeApi, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    kube_api.add_node("n1")
    kube_api.fail_next(3, 500, method="PATCH")

    await start_labeler()

    await has_labels(kube_api, "n1", DEFAULTS)
    assert [p.status for p in patches(kube_api)] == [500, 500, 500, 200]
    assert metric(registry, "gvirtus_labeler_api_errors_total", verb="patch", code="500") == 3


async def test_a_failed_restore_is_retried_from_the_same_watch_event(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    await running_on_a_labelled_node(kube_api, start_labeler)
    kube_api.fail_next(2, 503, method="PATCH")

    kube_api.remove_label("n1", FRONTEND)

    await has_labels(kube_api, "n1", {FRONTEND: "true"})
    assert len(lists(kube_api)) == 1


async def test_the_api_going_down_and_coming_back_is_survived(
    kube_api: FakeKubeApi, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    labeler = await running_on_a_labelled_node(kube_api, start_labeler)

    await kube_api.stop()
    kube_api.remove_label("n1", FRONTEND)  # changed while the labeler cannot see it
    await asyncio.sleep(1.0)  # several failed reconnects
    await kube_api.start()

    await has_labels(kube_api, "n1", {FRONTEND: "true"})
    assert labeler.healthy()
    assert metric(registry, "gvirtus_labeler_api_errors_total", verb="watch", code="connection") > 1
    assert metric(registry, "gvirtus_labeler_watch_restarts_total", reason="error") > 1


async def test_a_dropped_watch_resumes_from_the_last_seen_version(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    await running_on_a_labelled_node(kube_api, start_labeler)
    seen = kube_api.resource_version

    kube_api.drop_watches()
    await watching(kube_api)
    kube_api.remove_label("n1", FRONTEND)

    await has_labels(kube_api, "n1", {FRONTEND: "true"})
    assert watches(kube_api)[1].query["resourceVersion"] == str(seen)
    assert len(lists(kube_api)) == 1


async def test_an_error_event_inside_the_watch_is_retried_from_the_last_version(
    kube_api: FakeKubeApi, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    await running_on_a_labelled_node(kube_api, start_labeler)

    kube_api.inject_watch_event({"type": "ERROR", "object": status_object(500, "etcd hiccup")})
    await kube_api.wait_until(lambda: len(watches(kube_api)) == 2, within=WAIT)
    kube_api.remove_label("n1", FRONTEND)

    await has_labels(kube_api, "n1", {FRONTEND: "true"})
    assert metric(registry, "gvirtus_labeler_api_errors_total", verb="watch", code="500") == 1
    assert len(lists(kube_api)) == 1


async def test_an_expired_watch_lists_again_and_resumes(
    kube_api: FakeKubeApi, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    await running_on_a_labelled_node(kube_api, start_labeler)

    kube_api.expire_history()
    await kube_api.wait_until(lambda: len(lists(kube_api)) == 2, within=WAIT)
    await watching(kube_api)
    kube_api.remove_label("n1", BACKEND)

    await has_labels(kube_api, "n1", {BACKEND: "false"})
    assert metric(registry, "gvirtus_labeler_watch_restarts_total", reason="expired") == 1
    assert metric(registry, "gvirtus_labeler_api_errors_total", verb="watch", code="410") == 0


async def test_changes_missed_beyond_the_history_window_are_caught_by_listing_again(
    kube_api: FakeKubeApi, start_labeler: StartLabeler
) -> None:
    await running_on_a_labelled_node(kube_api, start_labeler)

    await kube_api.stop()
    kube_api.remove_label("n1", FRONTEND)
    kube_api.expire_history(notify_watchers=False)  # the removal is no longer replayable
    await kube_api.start()

    await has_labels(kube_api, "n1", {FRONTEND: "true"})
    assert len(lists(kube_api)) == 2


async def test_forbidden_names_the_missing_permission_and_is_retried(
    kube_api: FakeKubeApi,
    start_labeler: StartLabeler,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    kube_api.add_node("n1")
    kube_api.forbid("patch", "nodes")

    await start_labeler()
    await kube_api.wait_until(
        lambda: metric(registry, "gvirtus_labeler_api_errors_total", verb="patch", code="403") >= 2,
        within=WAIT,
    )
    kube_api.permit("patch", "nodes")

    await has_labels(kube_api, "n1", DEFAULTS)
    assert metric(registry, "gvirtus_labeler_api_errors_total", verb="patch", code="403") >= 2
    hints = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert hints
    assert hints[0].getMessage() == (
        "forbidden: grant 'patch' on 'nodes' to the labeler's ServiceAccount"
    )
    assert "cannot patch resource" in hints[0].__dict__["error"]


async def test_a_long_lived_watch_is_reopened_each_window_without_listing(
    kube_api: FakeKubeApi, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    kube_api.add_node("n1")
    await start_labeler(watch_window=0.2)
    await has_labels(kube_api, "n1", DEFAULTS)

    await kube_api.wait_until(lambda: len(watches(kube_api)) >= 3, within=WAIT)

    assert len(lists(kube_api)) == 1
    assert metric(registry, "gvirtus_labeler_watch_restarts_total", reason="window") >= 2


async def test_every_added_label_is_logged_with_node_key_and_value(
    kube_api: FakeKubeApi, start_labeler: StartLabeler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gvirtus_kai_labeler")
    kube_api.add_node("n1")

    await start_labeler()
    await watching(kube_api)  # opened once the initial labelling is done

    added = [
        (r.__dict__["node"], r.__dict__["key"], r.__dict__["value"])
        for r in caplog.records
        if r.getMessage() == "label added"
    ]
    assert sorted(added) == [("n1", BACKEND, "false"), ("n1", FRONTEND, "true")]


# -- all nodes ------------------------------------------------------------------------------------


async def test_all_nodes_mode_lists_in_pages_and_labels_many_nodes_through_one_watch(
    kube_api: FakeKubeApi, start_labeler: StartLabeler, registry: CollectorRegistry
) -> None:
    names = [f"node-{i:03d}" for i in range(150)]
    for name in names:
        kube_api.add_node(name, {BACKEND: "true"} if name.endswith("7") else {})

    await start_labeler(node_name=None, list_chunk_size=40)
    await kube_api.wait_until(
        lambda: all(FRONTEND in kube_api.labels(name) for name in names), within=WAIT * 3
    )
    await watching(kube_api)
    assert metric(registry, "gvirtus_labeler_labels_added_total", key=FRONTEND) == 150
    kube_api.add_node("late-joiner")
    kube_api.remove_label("node-042", FRONTEND)

    await has_labels(kube_api, "late-joiner", DEFAULTS)
    await has_labels(kube_api, "node-042", {FRONTEND: "true"})
    assert kube_api.labels("node-017")[BACKEND] == "true"
    assert [r.query.get("continue") is None for r in lists(kube_api)] == [True] + [False] * 3
    assert len(watches(kube_api)) == 1
    assert "fieldSelector" not in watches(kube_api)[0].query


# -- health and --once ----------------------------------------------------------------------------


async def test_health_follows_the_control_loop(
    kube_api: FakeKubeApi, client: AsyncClient, registry: CollectorRegistry
) -> None:
    kube_api.add_node("n1")
    labeler = Labeler(client, DEFAULTS, Metrics(registry), node_name="n1")
    assert not labeler.healthy()

    task = asyncio.create_task(labeler.run())
    await watching(kube_api)
    running = labeler.healthy()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert running
    assert not labeler.healthy()


def once_labeler(client: AsyncClient, node_name: str | None = "n1") -> Labeler:
    return Labeler(
        client,
        DEFAULTS,
        Metrics(CollectorRegistry()),
        node_name=node_name,
        backoff=Backoff(initial=0.01, maximum=0.05),
    )


async def test_label_once_adds_what_is_missing_and_returns_the_count(
    kube_api: FakeKubeApi, client: AsyncClient
) -> None:
    kube_api.add_node("n1", {BACKEND: "true"})

    added = await once_labeler(client).label_once()

    assert added == 1
    assert kube_api.labels("n1") == {BACKEND: "true", FRONTEND: "true"}
    assert watches(kube_api) == []


async def test_label_once_retries_transient_failures(
    kube_api: FakeKubeApi, client: AsyncClient
) -> None:
    kube_api.add_node("n1")
    kube_api.fail_next(2, 500)

    added = await once_labeler(client).label_once(attempts=3)

    assert added == 2


async def test_label_once_gives_up_after_its_attempts(
    kube_api: FakeKubeApi, client: AsyncClient
) -> None:
    kube_api.add_node("n1")
    kube_api.fail_next(3, 500)

    with pytest.raises(ApiFailure) as failure:
        await once_labeler(client).label_once(attempts=3)

    assert (failure.value.verb, failure.value.code) == ("list", 500)
    assert len(kube_api.requests) == 3


async def test_label_once_on_a_missing_node_raises_node_not_found(client: AsyncClient) -> None:
    with pytest.raises(NodeNotFound, match="'n1' not found"):
        await once_labeler(client).label_once()
