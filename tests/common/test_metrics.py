"""The common metrics registry behind the labeler's and the device plugin's ``/metrics``.

Pages are checked with prometheus_client's text parser (installed for the webhook), an
implementation independent of the one under test.
"""

from __future__ import annotations

import math

import pytest
from gvirtus_kai_common.metrics import Counter, Gauge, Registry, format_value
from gvirtus_kai_labeler.metrics import Metrics
from prometheus_client.parser import text_string_to_metric_families


def parsed(registry: Registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    page = registry.exposition().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def test_labeler_page_parses_with_names_types_and_values() -> None:
    registry = Registry()
    metrics = Metrics(registry)
    metrics.labels_added.labels(key="gvirtus.io/frontend.allowed").inc()
    metrics.api_errors.labels(verb="patch", code="409").inc(2)
    page = registry.exposition().decode()
    families = {family.name: family.type for family in text_string_to_metric_families(page)}
    assert families == {
        "gvirtus_labeler_labels_added": "counter",
        "gvirtus_labeler_conflicts": "counter",
        "gvirtus_labeler_api_errors": "counter",
        "gvirtus_labeler_watch_restarts": "counter",
    }
    assert parsed(registry) == {
        ("gvirtus_labeler_labels_added_total", (("key", "gvirtus.io/frontend.allowed"),)): 1.0,
        ("gvirtus_labeler_conflicts_total", ()): 0.0,
        ("gvirtus_labeler_api_errors_total", (("code", "409"), ("verb", "patch"))): 2.0,
    }


def test_label_values_and_help_are_escaped() -> None:
    registry = Registry()
    counter = Counter("odd", 'help with \\ and "quotes"\nand a newline', ["v"], registry=registry)
    awkward = 'back\\slash "quoted"\nnext line'
    counter.labels(v=awkward).inc()
    page = registry.exposition().decode()
    [family] = text_string_to_metric_families(page)
    assert (family.documentation, parsed(registry)) == (
        'help with \\ and "quotes"\nand a newline',
        {("odd_total", (("v", awkward),)): 1.0},
    )


def test_unlabelled_metrics_start_at_zero_and_labelled_ones_appear_on_first_use() -> None:
    registry = Registry()
    Gauge("plain", "x", registry=registry)
    labelled = Counter("by_reason", "x", ["reason"], registry=registry)
    before = parsed(registry)
    labelled.labels("expired")
    assert (before, parsed(registry)) == (
        {("plain", ()): 0.0},
        {("plain", ()): 0.0, ("by_reason_total", (("reason", "expired"),)): 0.0},
    )


def test_gauge_sets_increments_and_decrements() -> None:
    registry = Registry()
    gauge = Gauge("level", "x", registry=registry)
    gauge.set(5)
    gauge.inc(2)
    gauge.dec(0.5)
    assert (gauge.value, registry.get_sample_value("level")) == (6.5, 6.5)


def test_counter_refuses_to_go_down() -> None:
    counter = Counter("events", "x", registry=Registry())
    with pytest.raises(ValueError, match="only go up"):
        counter.inc(-1)


def test_counter_name_given_with_total_suffix_is_not_doubled() -> None:
    registry = Registry()
    Counter("requests_total", "x", registry=registry).inc()
    assert registry.get_sample_value("requests_total") == 1.0


def test_series_by_position_and_by_name_are_the_same_series() -> None:
    registry = Registry()
    counter = Counter("calls", "x", ["verb", "code"], registry=registry)
    counter.labels("get", "200").inc()
    counter.labels(code="200", verb="get").inc()
    assert registry.get_sample_value("calls_total", {"verb": "get", "code": "200"}) == 2.0


def test_sample_value_of_an_unknown_series_is_none() -> None:
    registry = Registry()
    Counter("calls", "x", ["verb"], registry=registry).labels("get").inc()
    assert registry.get_sample_value("calls_total", {"verb": "put"}) is None


@pytest.mark.parametrize(
    ("labels", "values", "by_name", "reason"),
    [
        ((), ("x",), {}, "has no labels"),
        (("a",), (), {}, "needs 1 label values"),
        (("a",), ("x", "y"), {}, "needs 1 label values"),
        (("a",), (), {"b": "x"}, "needs the labels a"),
        (("a", "b"), ("x",), {"b": "y"}, "by position or by name"),
    ],
)
def test_wrong_label_values_are_refused(
    labels: tuple[str, ...], values: tuple[str, ...], by_name: dict[str, str], reason: str
) -> None:
    counter = Counter("calls", "x", labels, registry=Registry())
    with pytest.raises(ValueError, match=reason):
        counter.labels(*values, **by_name)


def test_labelled_metric_cannot_be_updated_without_picking_a_series() -> None:
    gauge = Gauge("per_key", "x", ["key"], registry=Registry())
    with pytest.raises(ValueError, match=r"\.labels"):
        gauge.set(1)


@pytest.mark.parametrize("name", ["", "1starts_with_digit", "has-dash", "has space"])
def test_invalid_metric_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="metric name"):
        Gauge(name, "x", registry=Registry())


@pytest.mark.parametrize("label", ["__reserved", "has-dash", "9lives"])
def test_invalid_label_names_are_refused(label: str) -> None:
    with pytest.raises(ValueError, match="label name"):
        Gauge("fine", "x", [label], registry=Registry())


def test_one_registry_refuses_two_metrics_of_the_same_name() -> None:
    registry = Registry()
    Gauge("twice", "x", registry=registry)
    with pytest.raises(ValueError, match="already registered"):
        Counter("twice", "x", registry=registry)


@pytest.mark.parametrize(
    ("value", "text"),
    [(1, "1.0"), (0.25, "0.25"), (1e21, "1e+21"), (math.inf, "+Inf"), (-math.inf, "-Inf")],
)
def test_values_are_written_as_prometheus_reads_them(value: float, text: str) -> None:
    assert format_value(value) == text


def test_nan_is_written_as_prometheus_nan() -> None:
    assert format_value(math.nan) == "NaN"


def test_empty_registry_serves_an_empty_page() -> None:
    assert Registry().exposition() == b""
