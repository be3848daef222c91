"""Capped exponential backoff with full jitter."""

from __future__ import annotations

from gvirtus_kai_common.backoff import Backoff

CEILINGS = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def _sequence(backoff: Backoff) -> list[float]:
    return [backoff.next_delay() for _ in CEILINGS]


def test_each_delay_stays_under_a_doubling_ceiling_capped_at_the_maximum() -> None:
    for _ in range(200):
        delays = _sequence(Backoff(initial=0.1, maximum=1.0, factor=2.0))
        assert all(0 <= delay <= ceiling for delay, ceiling in zip(delays, CEILINGS, strict=True))


def test_later_delays_reach_beyond_the_first_ceiling() -> None:
    # Without growth every delay would stay under 0.1 s.
    later = [_sequence(Backoff(initial=0.1, maximum=1.0))[-1] for _ in range(50)]
    assert max(later) > 0.1


def test_delays_are_jittered_not_fixed() -> None:
    delays = {Backoff(initial=1.0, maximum=1.0).next_delay() for _ in range(20)}
    assert len(delays) > 1


def test_reset_starts_again_from_the_initial_ceiling() -> None:
    backoff = Backoff(initial=0.1, maximum=10.0)
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempts == 0
    assert max(Backoff(initial=0.1, maximum=10.0).next_delay() for _ in range(50)) <= 0.1
    assert backoff.next_delay() <= 0.1
