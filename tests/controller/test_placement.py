"""Placement: the choice of backend and the state behind it, without any I/O."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from gvirtus_kai_controller.placement import (
    Backend,
    Endpoint,
    Placement,
    PodInfo,
    ZoneConstraint,
    ZoneTerm,
)

NOW = 1_000.0


def backend(ip: str, zone: str | None = None, port: int = 9999) -> Endpoint:
    return Endpoint(f"gvirtus-system/{ip}", True, backend=Backend(ip, port, zone))


def gated(name: str, *, created: float = 0.0, priority: int = 0, **fields: object) -> PodInfo:
    return PodInfo("apps", name, f"uid-{name}", created, priority, gated=True, **fields)  # type: ignore[arg-type]


def placement(*endpoints: Endpoint, **options: object) -> Placement:
    state = Placement(**options)  # type: ignore[arg-type]
    state.replace_slices({"s1": endpoints}, NOW)
    state.replace_pods([], NOW)
    state.mark_synced(NOW)
    return state


def assigned(state: Placement) -> dict[str, str]:
    return {a.pod.name: a.backend.address for a in state.assign()}


# --- leastPods -------------------------------------------------------------------------------


def test_least_pods_picks_the_backend_with_fewest_live_pods() -> None:
    state = placement(backend("10.0.0.1"), backend("10.0.0.2"))
    state.upsert_pod(PodInfo("apps", "old", "u-old", 0.0, backend="10.0.0.1:9999"), NOW)
    state.upsert_pod(gated("new"), NOW)
    assert assigned(state) == {"new": "10.0.0.2:9999"}


def test_least_pods_breaks_ties_by_numeric_ip_not_by_text() -> None:
    # As text "10.0.0.10" < "10.0.0.9"; as numbers .9 comes first.
    state = placement(backend("10.0.0.10"), backend("10.0.0.9"))
    state.upsert_pod(gated("p"), NOW)
    assert assigned(state) == {"p": "10.0.0.9:9999"}


def test_least_pods_spreads_pods_evenly_within_one() -> None:
    state = placement(*(backend(f"10.0.1.{i}") for i in range(1, 8)))
    for i in range(100):
        state.upsert_pod(gated(f"p{i}", created=i), NOW)
    counts = Counter(assigned(state).values())
    assert sum(counts.values()) == 100
    assert max(counts.values()) - min(counts.values()) <= 1


def test_the_choice_is_stable_for_the_same_state() -> None:
    def run() -> dict[str, str]:
        state = placement(backend("10.0.0.3"), backend("10.0.0.1"), backend("10.0.0.2"))
        for i in range(6):
            state.upsert_pod(gated(f"p{i}", created=i), NOW)
        return assigned(state)

    assert run() == run()


# --- random ----------------------------------------------------------------------------------


def test_random_uses_every_ready_backend_and_only_those() -> None:
    state = placement(
        backend("10.0.0.1"), backend("10.0.0.2"), policy="random", rng=random.Random(7)
    )
    for i in range(200):
        state.upsert_pod(gated(f"p{i}", created=i), NOW)
    assert set(assigned(state).values()) == {"10.0.0.1:9999", "10.0.0.2:9999"}


def test_random_respects_max_pods_per_backend() -> None:
    state = placement(
        backend("10.0.0.1"),
        backend("10.0.0.2"),
        policy="random",
        max_pods_per_backend=3,
        rng=random.Random(1),
    )
    for i in range(10):
        state.upsert_pod(gated(f"p{i}", created=i), NOW)
    assert Counter(assigned(state).values()) == {"10.0.0.1:9999": 3, "10.0.0.2:9999": 3}
    assert state.waiting_count == 4


# --- sameZone --------------------------------------------------------------------------------


def test_same_zone_is_least_loaded_across_zones() -> None:
    state = placement(backend("10.0.0.1", "a"), backend("10.0.0.2", "b"), policy="sameZone")
    state.upsert_pod(PodInfo("apps", "x", "u-x", 0.0, backend="10.0.0.1:9999"), NOW)
    state.upsert_pod(gated("p"), NOW)
    assert assigned(state) == {"p": "10.0.0.2:9999"}


def test_same_zone_only_considers_zones_the_pod_may_run_in() -> None:
    state = placement(backend("10.0.0.1", "a"), backend("10.0.0.2", "b"), policy="sameZone")
    state.upsert_pod(PodInfo("apps", "x", "u-x", 0.0, backend="10.0.0.2:9999"), NOW)
    only_b = ZoneConstraint(terms=(ZoneTerm((("In", frozenset({"b"})),)),))
    state.upsert_pod(gated("p", zones=only_b), NOW)
    assert assigned(state) == {"p": "10.0.0.2:9999"}


def test_same_zone_pod_with_no_allowed_backend_waits_without_blocking_others() -> None:
    state = placement(backend("10.0.0.1", "a"), policy="sameZone")
    state.upsert_pod(gated("restricted", created=0, zones=ZoneConstraint(node_selector="z")), NOW)
    state.upsert_pod(gated("free", created=1), NOW)
    assert assigned(state) == {"free": "10.0.0.1:9999"}
    waiting = state.waiting_pods()
    assert [p.name for p in waiting] == ["restricted"]
    assert state.waiting_reason(waiting[0]) == (
        "no ready GVirtuS backend in a zone this pod may run in (1 ready in zones a)"
    )


@pytest.mark.parametrize(
    ("constraint", "zone", "allowed"),
    [
        (ZoneConstraint(), "a", True),
        (ZoneConstraint(node_selector="a"), "a", True),
        (ZoneConstraint(node_selector="a"), "b", False),
        (ZoneConstraint(terms=(ZoneTerm((("NotIn", frozenset({"a"})),)),)), "a", False),
        (ZoneConstraint(terms=(ZoneTerm((("NotIn", frozenset({"a"})),)),)), "b", True),
        # Terms are ORed: a term without a zone requirement allows every zone.
        (ZoneConstraint(terms=(ZoneTerm((("In", frozenset({"a"})),)), ZoneTerm())), "b", True),
        (ZoneConstraint(terms=(ZoneTerm((("Exists", frozenset()),)),)), None, False),
        (ZoneConstraint(terms=(ZoneTerm((("DoesNotExist", frozenset()),)),)), None, True),
    ],
)
def test_zone_constraints_follow_node_affinity_semantics(
    constraint: ZoneConstraint, zone: str | None, allowed: bool
) -> None:
    assert constraint.allows(zone) is allowed


# --- maxPodsPerBackend and the waiting queue -------------------------------------------------


def test_when_every_backend_is_full_pods_wait_and_say_so() -> None:
    state = placement(
        backend("10.0.0.1"), backend("10.0.0.2"), backend("10.0.0.3"), max_pods_per_backend=4
    )
    for i in range(13):
        state.upsert_pod(gated(f"p{i}", created=i), NOW)
    assert len(state.assign()) == 12
    (waiting,) = state.waiting_pods()
    assert waiting.name == "p12"
    assert state.waiting_reason(waiting) == "all 3 backends full (maxPodsPerBackend=4)"


def test_waiting_pods_are_served_by_priority_then_creation_time() -> None:
    state = placement(max_pods_per_backend=1)
    state.upsert_pod(gated("young-high", created=30, priority=100), NOW)
    state.upsert_pod(gated("old-low", created=10, priority=0), NOW)
    state.upsert_pod(gated("young-low", created=20, priority=0), NOW)
    state.upsert_pod(gated("old-high", created=5, priority=100), NOW)
    order = []
    for i in range(4):
        state.set_slice(f"s{i}", [backend(f"10.0.0.{i + 1}")], NOW)
        order += [a.pod.name for a in state.assign()]
    assert order == ["old-high", "young-high", "old-low", "young-low"]


def test_a_deleted_pod_frees_its_slot() -> None:
    state = placement(backend("10.0.0.1"), max_pods_per_backend=1)
    state.upsert_pod(PodInfo("apps", "old", "u-old", 0.0, backend="10.0.0.1:9999"), NOW)
    state.upsert_pod(gated("new", created=1), NOW)
    assert assigned(state) == {}
    state.remove_pod(("apps", "old"))
    assert assigned(state) == {"new": "10.0.0.1:9999"}


def test_a_pod_in_a_terminal_phase_or_terminating_frees_its_slot() -> None:
    state = placement(backend("10.0.0.1"), max_pods_per_backend=1)
    state.upsert_pod(PodInfo("apps", "old", "u-old", 0.0, backend="10.0.0.1:9999"), NOW)
    state.upsert_pod(gated("new", created=1), NOW)
    assert assigned(state) == {}
    state.upsert_pod(PodInfo("apps", "old", "u-old", 0.0, backend="10.0.0.1:9999", live=False), NOW)
    assert assigned(state) == {"new": "10.0.0.1:9999"}
    assert state.load("10.0.0.1:9999") == 1


def test_an_assignment_in_flight_counts_at_once() -> None:
    state = placement(backend("10.0.0.1"), backend("10.0.0.2"))
    state.upsert_pod(gated("a", created=0), NOW)
    first = state.assign()
    state.upsert_pod(gated("b", created=1), NOW)
    second = state.assign()
    assert {first[0].backend.ip, second[0].backend.ip} == {"10.0.0.1", "10.0.0.2"}


def test_a_failed_assignment_frees_the_slot_and_the_pod_waits_again() -> None:
    state = placement(backend("10.0.0.1"), max_pods_per_backend=1)
    state.upsert_pod(gated("a"), NOW)
    (decision,) = state.assign()
    state.assignment_failed(decision, NOW)
    assert state.load("10.0.0.1:9999") == 0
    assert [a.pod.name for a in state.assign()] == ["a"]


def test_a_pod_is_never_decided_twice_while_its_patch_is_in_flight() -> None:
    state = placement(backend("10.0.0.1"))
    state.upsert_pod(gated("a"), NOW)
    assert len(state.assign()) == 1
    state.upsert_pod(gated("a"), NOW)  # the watch repeats the gated pod meanwhile
    assert state.assign() == []


def test_an_older_copy_of_an_assigned_pod_does_not_make_it_wait_again() -> None:
    state = placement(backend("10.0.0.1"))
    state.upsert_pod(gated("a"), NOW)
    (decision,) = state.assign()
    state.assignment_done(
        decision, PodInfo("apps", "a", "uid-a", 0.0, backend="10.0.0.1:9999"), NOW
    )
    state.upsert_pod(gated("a"), NOW)  # an event from before the patch, delivered late
    assert state.assign() == []
    assert state.load("10.0.0.1:9999") == 1


def test_a_pod_recreated_under_the_same_name_waits_as_a_new_pod() -> None:
    state = placement(backend("10.0.0.1"))
    state.upsert_pod(PodInfo("apps", "a", "uid-1", 0.0, backend="10.0.0.1:9999"), NOW)
    state.upsert_pod(PodInfo("apps", "a", "uid-2", 5.0, gated=True), NOW)
    assert [a.pod.uid for a in state.assign()] == ["uid-2"]


def test_a_gated_pod_carrying_a_backend_annotation_waits_and_does_not_count() -> None:
    # A copy of an assigned pod (kubectl debug --copy-to, an exported manifest) is gated again
    # by the webhook: its copied address holds no connection, so it gets a backend of its own.
    state = placement(backend("10.0.0.1"), backend("10.0.0.2"))
    state.upsert_pod(gated("copy", backend="10.0.0.1:9999"), NOW)
    assert state.load("10.0.0.1:9999") == 0
    assert assigned(state) == {"copy": "10.0.0.1:9999"}


def test_pods_without_the_gate_are_counted_but_never_assigned() -> None:
    state = placement(backend("10.0.0.1"))
    state.upsert_pod(PodInfo("apps", "ungated", "u1", 0.0), NOW)
    assert state.assign() == []
    assert state.waiting_count == 0


# --- rebuild on start ------------------------------------------------------------------------


def test_state_is_rebuilt_from_annotations_so_a_restart_never_assigns_twice() -> None:
    before = placement(backend("10.0.0.1"), backend("10.0.0.2"), max_pods_per_backend=2)
    for i in range(3):
        before.upsert_pod(gated(f"p{i}", created=i), NOW)
    decided = before.assign()
    answers = [
        PodInfo("apps", a.pod.name, a.pod.uid, a.pod.created, backend=a.backend.address)
        for a in decided
    ]
    # A new process lists the same pods: assigned ones by annotation, plus two new gated ones.
    after = placement(backend("10.0.0.1"), backend("10.0.0.2"), max_pods_per_backend=2)
    after.replace_pods([*answers, gated("p3", created=3), gated("p4", created=4)], NOW)
    assert after.loads() == before.loads()  # the same counts as before the restart
    assert assigned(after) == {"p3": "10.0.0.2:9999"}
    assert [p.name for p in after.waiting_pods()] == ["p4"]


def test_a_relist_forgets_pods_deleted_while_the_watch_was_down() -> None:
    state = placement(backend("10.0.0.1"), max_pods_per_backend=1)
    state.upsert_pod(PodInfo("apps", "gone", "u-gone", 0.0, backend="10.0.0.1:9999"), NOW)
    state.replace_pods([gated("new")], NOW)
    assert assigned(state) == {"new": "10.0.0.1:9999"}


# --- backends from EndpointSlices ------------------------------------------------------------


def test_no_backend_reason_counts_ready_of_all() -> None:
    state = placement(
        Endpoint("ns/b1", False, backend=None), Endpoint("ns/b2", False, backend=None)
    )
    assert state.waiting_reason(gated("p")) == "no ready GVirtuS backend (0 of 2 ready)"


def test_no_backend_at_all_is_zero_of_zero() -> None:
    assert placement().waiting_reason(gated("p")) == "no ready GVirtuS backend (0 of 0 ready)"


def test_ipv6_only_backends_are_not_used_and_the_reason_says_why() -> None:
    state = placement(Endpoint("ns/b1", True, ipv4=False), Endpoint("ns/b2", True, ipv4=False))
    state.upsert_pod(gated("p"), NOW)
    assert state.assign() == []
    assert state.waiting_reason(gated("p")) == (
        "no ready GVirtuS backend has an IPv4 address (2 of 2 ready, IPv6 only; "
        "GVirtuS connects to IPv4 addresses only)"
    )


def test_a_dual_stack_backend_counts_once_and_serves_over_ipv4() -> None:
    state = Placement()
    v4 = Endpoint("ns/b1", True, backend=Backend("10.0.0.1", 9999))
    v6 = Endpoint("ns/b1", True, ipv4=False)
    state.replace_slices({"v4": [v4], "v6": [v6]}, NOW)
    state.mark_synced(NOW)
    state.upsert_pod(gated("p"), NOW)
    assert assigned(state) == {"p": "10.0.0.1:9999"}


def test_ready_endpoints_without_the_named_port_are_reported() -> None:
    state = placement(Endpoint("ns/b1", True, ipv4=True, backend=None), port_name="gvirtus")
    assert state.waiting_reason(gated("p")) == (
        "no ready GVirtuS backend serves a port named 'gvirtus' (1 of 1 ready)"
    )


def test_a_backend_that_becomes_ready_releases_the_first_waiting_pod() -> None:
    state = placement()
    state.upsert_pod(gated("p"), NOW)
    assert state.assign() == []
    state.set_slice("s1", [backend("10.0.0.7")], NOW)
    assert assigned(state) == {"p": "10.0.0.7:9999"}


# --- lost backends ---------------------------------------------------------------------------


def test_pods_of_a_backend_that_leaves_are_reported_lost_once() -> None:
    state = placement(backend("10.0.0.1"), backend("10.0.0.2"))
    state.upsert_pod(PodInfo("apps", "a", "ua", 0.0, backend="10.0.0.1:9999"), NOW)
    state.upsert_pod(PodInfo("apps", "b", "ub", 0.0, backend="10.0.0.2:9999"), NOW)
    gone = state.replace_slices({"s1": [backend("10.0.0.2")]}, NOW)
    assert [b.address for b in gone] == ["10.0.0.1:9999"]
    assert [(lost.pod.name, lost.address) for lost in state.take_lost_news()] == [
        ("a", "10.0.0.1:9999")
    ]
    assert state.take_lost_news() == []


def test_only_owned_lost_pods_are_due_for_eviction_and_only_after_the_grace() -> None:
    state = placement(backend("10.0.0.1"))
    state.upsert_pod(
        PodInfo("apps", "owned", "u1", 0.0, backend="10.0.0.1:9999", controller_owned=True), NOW
    )
    state.upsert_pod(PodInfo("apps", "bare", "u2", 0.0, backend="10.0.0.1:9999"), NOW)
    state.remove_slice("s1", NOW)
    assert state.due_for_eviction(NOW + 59, grace_seconds=60) == []
    assert [p.name for p in state.due_for_eviction(NOW + 60, grace_seconds=60)] == ["owned"]


def test_a_backend_that_comes_back_within_the_grace_cancels_the_loss() -> None:
    state = placement(backend("10.0.0.1"))
    state.upsert_pod(
        PodInfo("apps", "owned", "u1", 0.0, backend="10.0.0.1:9999", controller_owned=True), NOW
    )
    state.remove_slice("s1", NOW)
    state.set_slice("s1", [backend("10.0.0.1")], NOW + 10)
    assert state.due_for_eviction(NOW + 100, grace_seconds=60) == []


def test_pods_pointing_at_a_missing_backend_at_start_are_lost_after_sync() -> None:
    state = Placement()
    state.replace_slices({}, NOW)
    state.replace_pods([PodInfo("apps", "a", "ua", 0.0, backend="10.0.0.1:9999")], NOW)
    assert state.take_lost_news() == []  # not before both lists are in
    state.mark_synced(NOW)
    assert [lost.pod.name for lost in state.take_lost_news()] == ["a"]


# --- pods that cannot be placed as they are ---------------------------------------------------


def test_a_pod_with_a_problem_waits_saying_it_and_does_not_hold_up_the_others() -> None:
    state = placement(backend("10.0.0.1"))
    state.upsert_pod(gated("bad", created=1, problem="annotation gvirtus.io/threads='0' ..."), NOW)
    state.upsert_pod(gated("good", created=2), NOW)
    assert assigned(state) == {"good": "10.0.0.1:9999"}
    [waiting] = state.waiting_pods()
    assert state.waiting_reason(waiting) == "annotation gvirtus.io/threads='0' ..."


def test_a_pod_whose_problem_is_fixed_is_assigned() -> None:
    state = placement(backend("10.0.0.1"))
    state.upsert_pod(gated("p", problem="bad threads"), NOW)
    assert assigned(state) == {}
    state.upsert_pod(gated("p", threads=4), NOW)
    assert assigned(state) == {"p": "10.0.0.1:9999"}


# --- what is kept per pod ---------------------------------------------------------------------


def test_a_removed_pod_leaves_no_timers_behind() -> None:
    state = placement(backend("10.0.0.1"))
    pod = gated("p")
    state.upsert_pod(pod, NOW)
    state.timers(pod).retry.next_delay()
    state.remove_pod(pod.key)
    state.upsert_pod(pod, NOW)
    assert state.timers(pod).retry.attempts == 0


def test_a_new_pod_of_the_same_name_gets_timers_of_its_own() -> None:
    # Its DELETE may be missed (a relist shows the new pod only): the uid tells them apart.
    state = placement(backend("10.0.0.1"))
    first = gated("p")
    state.upsert_pod(first, NOW)
    state.timers(first).retry.next_delay()
    second = PodInfo("apps", "p", "uid-second", 0.0, gated=True)
    state.replace_pods([second], NOW)
    assert state.timers(second).retry.attempts == 0


def test_a_forgotten_pod_gets_timers_that_are_not_kept() -> None:
    state = placement(backend("10.0.0.1"))
    ghost = gated("ghost")
    state.timers(ghost).retry.next_delay()
    state.upsert_pod(ghost, NOW)
    assert state.timers(ghost).retry.attempts == 0


def test_a_pod_whose_backend_comes_back_may_be_evicted_at_once_when_lost_again() -> None:
    state = placement(backend("10.0.0.1"))
    pod = PodInfo("apps", "p", "u", 0.0, backend="10.0.0.1:9999", controller_owned=True)
    state.upsert_pod(pod, NOW)
    state.replace_slices({}, NOW)
    state.timers(pod).next_eviction = NOW + 100
    state.replace_slices({"s1": [backend("10.0.0.1")]}, NOW + 1)
    assert state.timers(pod).next_eviction == 0.0
