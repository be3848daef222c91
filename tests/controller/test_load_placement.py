"""Placement by measured load (``leastLoaded``, ``maxClientsPerBackend``) and the count of
placeholder pods, without any I/O."""

from __future__ import annotations

import pytest
from gvirtus_kai_controller.placement import (
    Backend,
    BackendLoad,
    Endpoint,
    Placement,
    PodInfo,
    placeholders_needed,
)

NOW = 1_000.0
A, B, C = "10.0.0.1:9999", "10.0.0.2:9999", "10.0.0.3:9999"


def backend(ip: str, zone: str | None = None) -> Endpoint:
    return Endpoint(f"gvirtus-system/{ip}", True, backend=Backend(ip, 9999, zone, 9180))


def gated(name: str, *, created: float = 0.0) -> PodInfo:
    return PodInfo("apps", name, f"uid-{name}", created, gated=True)


def running(name: str, address: str, ip: str | None = None) -> PodInfo:
    """A released pod pinned to ``address``, with a pod IP once it runs."""
    return PodInfo("apps", name, f"uid-{name}", 0.0, backend=address, ip=ip)


def load(*clients: str, gpu: tuple[float, ...] = ()) -> BackendLoad:
    return BackendLoad(frozenset(clients), len(clients), gpu)


def placement(*ips: str, **options: object) -> Placement:
    state = Placement(**options)  # type: ignore[arg-type]
    state.replace_slices({"s1": [backend(ip) for ip in ips]}, NOW)
    state.replace_pods([], NOW)
    state.mark_synced(NOW)
    return state


def assigned(state: Placement) -> dict[str, str]:
    return {a.pod.name: a.backend.address for a in state.assign()}


# --- leastLoaded -----------------------------------------------------------------------------


def test_least_loaded_picks_the_backend_with_fewest_connected_clients() -> None:
    state = placement("10.0.0.1", "10.0.0.2", policy="leastLoaded")
    # Clients the controller never pinned (hand-configured ones) are load all the same.
    state.set_loads({A: load("10.9.0.1", "10.9.0.2"), B: load("10.9.0.3")})
    state.upsert_pod(gated("p"), NOW)
    assert assigned(state) == {"p": B}


def test_a_pinned_pod_not_yet_connected_counts_as_pending_load() -> None:
    state = placement("10.0.0.1", "10.0.0.2", policy="leastLoaded")
    state.upsert_pod(running("starting", B), NOW)  # pinned, no connection seen yet
    state.set_loads({A: load("10.9.0.1"), B: load()})
    state.upsert_pod(gated("p"), NOW)
    # 1 client on A against 0 clients + 1 pending on B: a tie, broken by address.
    assert state.clients(B) == 1
    assert assigned(state) == {"p": A}


def test_a_pinned_pod_seen_connected_counts_once_not_twice() -> None:
    state = placement("10.0.0.1", "10.0.0.2", policy="leastLoaded")
    state.upsert_pod(running("connected", A, ip="10.9.0.1"), NOW)
    state.set_loads({A: load("10.9.0.1"), B: load("10.9.0.7", "10.9.0.8")})
    assert (state.clients(A), state.pending(A)) == (1, 0)
    state.upsert_pod(gated("p"), NOW)
    assert assigned(state) == {"p": A}


def test_a_pod_getting_its_ip_later_moves_from_pending_to_connected() -> None:
    state = placement("10.0.0.1", policy="leastLoaded")
    state.set_loads({A: load("10.9.0.1")})
    state.upsert_pod(running("p", A), NOW)
    assert (state.clients(A), state.pending(A)) == (2, 1)
    state.upsert_pod(running("p", A, ip="10.9.0.1"), NOW)
    assert (state.clients(A), state.pending(A)) == (1, 0)
    state.remove_pod(("apps", "p"))
    assert (state.clients(A), state.pending(A)) == (1, 0)


def test_least_loaded_breaks_ties_by_mean_gpu_utilization() -> None:
    state = placement("10.0.0.1", "10.0.0.2", policy="leastLoaded")
    state.set_loads({A: load("10.9.0.1", gpu=(0.9, 0.5)), B: load("10.9.0.2", gpu=(0.3,))})
    state.upsert_pod(gated("p"), NOW)
    assert assigned(state) == {"p": B}


def test_a_backend_without_gpu_readings_counts_as_idle_gpu() -> None:
    state = placement("10.0.0.1", "10.0.0.2", policy="leastLoaded")
    state.set_loads({A: load(gpu=(0.2,)), B: load()})
    state.upsert_pod(gated("p"), NOW)
    assert assigned(state) == {"p": B}


def test_least_loaded_breaks_full_ties_by_numeric_address() -> None:
    state = placement("10.0.0.10", "10.0.0.9", policy="leastLoaded")
    state.set_loads({"10.0.0.10:9999": load(), "10.0.0.9:9999": load()})
    state.upsert_pod(gated("p"), NOW)
    assert assigned(state) == {"p": "10.0.0.9:9999"}


def test_a_backend_whose_agent_did_not_answer_is_ranked_by_its_pinned_pods() -> None:
    state = placement("10.0.0.1", "10.0.0.2", policy="leastLoaded")
    state.upsert_pod(running("x", A, ip="10.9.0.1"), NOW)
    # B's agent measured three clients; A's answered nothing: A counts its one pinned pod.
    state.set_loads({A: None, B: load("10.9.0.5", "10.9.0.6", "10.9.0.7")})
    assert state.measured(A) is None
    state.upsert_pod(gated("p"), NOW)
    assert assigned(state) == {"p": A}


def test_each_decision_counts_at_once_so_a_burst_is_spread() -> None:
    state = placement("10.0.0.1", "10.0.0.2", "10.0.0.3", policy="leastLoaded")
    state.set_loads({A: load("10.9.0.1", "10.9.0.2"), B: load(), C: load("10.9.0.3")})
    for i in range(6):
        state.upsert_pod(gated(f"p{i}", created=i), NOW)
    decided = list(assigned(state).values())
    # B takes the first two (0, then 1 pending), then all are at 2 and take turns by address.
    assert decided == [B, B, C, A, B, C]


def test_the_decision_carries_the_load_it_was_made_on() -> None:
    state = placement("10.0.0.1", policy="leastLoaded")
    state.upsert_pod(running("starting", A), NOW)
    state.set_loads({A: load("10.9.0.1", "10.9.0.2", "10.9.0.3", gpu=(0.35,))})
    state.upsert_pod(gated("p"), NOW)
    [decision] = state.assign()
    assert decision.load == "3 clients, 1 pending, GPU 35%"


def test_the_decision_on_an_unknown_load_says_so() -> None:
    state = placement("10.0.0.1", policy="leastLoaded")
    state.upsert_pod(gated("p"), NOW)
    [decision] = state.assign()
    assert decision.load == "load unknown: no answer from its agent; 0 pods on it"


# --- maxClientsPerBackend --------------------------------------------------------------------


def test_a_backend_at_its_client_limit_takes_no_new_pod() -> None:
    state = placement("10.0.0.1", "10.0.0.2", policy="leastLoaded", max_clients_per_backend=2)
    state.set_loads({A: load("10.9.0.1", "10.9.0.2"), B: load("10.9.0.3")})
    for i in range(3):
        state.upsert_pod(gated(f"p{i}", created=i), NOW)
    assert assigned(state) == {"p0": B}
    assert state.waiting_count == 2
    reason = state.waiting_reason(state.waiting_pods()[0])
    assert reason == "all 2 backends full (maxPodsPerBackend=0, maxClientsPerBackend=2)"


def test_pending_pinned_pods_count_toward_the_client_limit() -> None:
    state = placement("10.0.0.1", max_clients_per_backend=2)
    state.set_loads({A: load("10.9.0.1")})
    state.upsert_pod(running("starting", A), NOW)
    state.upsert_pod(gated("p"), NOW)
    assert assigned(state) == {}


def test_the_client_limit_holds_under_any_policy_and_with_the_pod_limit() -> None:
    state = placement(
        "10.0.0.1", policy="leastPods", max_pods_per_backend=5, max_clients_per_backend=4
    )
    state.set_loads({A: load("10.9.0.1", "10.9.0.2", "10.9.0.3")})
    for i in range(3):
        state.upsert_pod(gated(f"p{i}", created=i), NOW)
    assert assigned(state) == {"p0": A}


def test_an_unknown_backend_is_held_to_the_client_limit_by_its_pinned_pods() -> None:
    state = placement("10.0.0.1", max_clients_per_backend=2)
    for i in range(3):
        state.upsert_pod(gated(f"p{i}", created=i), NOW)
    assert list(assigned(state)) == ["p0", "p1"]


def test_clients_that_disconnect_free_room_at_the_next_poll() -> None:
    state = placement("10.0.0.1", max_clients_per_backend=1)
    state.set_loads({A: load("10.9.0.1")})
    state.upsert_pod(gated("p"), NOW)
    assert assigned(state) == {}
    state.set_loads({A: load()})
    assert assigned(state) == {"p": A}


# --- demand ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("waiting", "per_backend", "maximum", "expected"),
    [
        (0, 2, 4, 0),  # nobody waits: none
        (1, 0, 4, 1),  # unlimited backends: one new backend serves them all
        (9, 0, 4, 1),
        (3, 2, 4, 2),  # rounded up
        (4, 2, 4, 2),
        (9, 1, 4, 4),  # never more than the maximum
        (5, 2, 0, 0),  # a maximum of 0 turns placeholders off
    ],
)
def test_placeholders_are_one_per_missing_backend_up_to_the_maximum(
    waiting: int, per_backend: int, maximum: int, expected: int
) -> None:
    assert placeholders_needed(waiting, per_backend, maximum) == expected


def test_only_pods_past_the_wait_with_no_backend_at_all_are_demand() -> None:
    state = placement()
    state.upsert_pod(gated("old", created=NOW - 90), NOW)
    state.upsert_pod(gated("new", created=NOW - 10), NOW)
    assert state.without_room(NOW, 60) == 1
    assert state.oldest_wait(NOW) == 90


def test_pods_that_a_backend_has_room_for_are_no_demand() -> None:
    state = placement("10.0.0.1", max_pods_per_backend=1)
    state.upsert_pod(gated("p", created=NOW - 90), NOW)
    assert state.without_room(NOW, 60) == 0  # the backend has room: p only waits its turn
    assert assigned(state) == {"p": A}
    state.upsert_pod(gated("q", created=NOW - 90), NOW)
    assert assigned(state) == {}
    assert state.without_room(NOW, 60) == 1


def test_the_capacity_of_a_new_backend_is_the_tighter_limit() -> None:
    assert Placement(max_pods_per_backend=4, max_clients_per_backend=2).per_backend_capacity == 2
    assert Placement(max_pods_per_backend=3).per_backend_capacity == 3
    assert Placement().per_backend_capacity == 0


def test_a_pod_with_a_problem_of_its_own_is_no_demand() -> None:
    state = placement()
    state.upsert_pod(
        PodInfo("apps", "bad", "u", NOW - 90, gated=True, problem="bad annotation"), NOW
    )
    assert state.without_room(NOW, 60) == 0
