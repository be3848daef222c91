"""The verdicts `make bench` prints and fails on (bench/report.py)."""

from __future__ import annotations

from bench.report import exit_status, info, percentile, row


def test_a_figure_within_its_upper_target_passes_and_one_above_it_misses() -> None:
    assert row("p99", 4.9, "ms", 5.0).lstrip().startswith("PASS")
    assert row("p99", 5.0, "ms", 5.0).lstrip().startswith("PASS")
    assert row("p99", 5.1, "ms", 5.0).lstrip().startswith("MISS")


def test_a_figure_with_a_lower_bound_misses_below_it() -> None:
    assert row("speed-up", 3.0, "x", 5.0, at_least=True).lstrip().startswith("MISS")
    assert row("speed-up", 5.2, "x", 5.0, at_least=True).lstrip().startswith("PASS")


def test_rows_show_value_unit_and_target() -> None:
    line = row("RSS", 62.5, "MiB", 80.0)
    assert "62.500 MiB" in line
    assert line.endswith("target <= 80 MiB")
    assert row("start", 0.37, "s").lstrip().startswith("info")
    assert info("runs", "1, 2, 3").split() == ["info", "runs", "1,", "2,", "3"]


def test_make_bench_fails_only_when_a_row_missed() -> None:
    passed, missed, shown = row("a", 1, "s", 2), row("b", 3, "s", 2), row("c", 9, "s")
    assert exit_status(["heading", passed, shown]) == 0
    assert exit_status(["heading", passed, missed, shown]) == 1


def test_percentile_is_the_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 0.5) == 51.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
