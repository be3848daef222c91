"""Prometheus counters and gauges, served in the text exposition format (version 0.0.4).

The labeler and the device plugin run on every node with a 50 MiB memory budget. They need a few
counters and gauges and one text page, which is what this module provides. prometheus_client
cannot be imported in part: its package import also loads its HTTP, WSGI, ASGI and push-gateway
code (http.server, urllib.request, wsgiref, email, gzip): 2.5 MiB of idle RSS in the device plugin
and 1.4 MiB in the labeler. The webhook, a single Deployment, keeps using prometheus_client.

The API mirrors prometheus_client's (``Counter(name, documentation, labelnames,
registry=...)``, ``.labels(...)``, ``.inc()``, ``.set()``, ``get_sample_value``), and the page
parses with Prometheus' text parser. Counters are exposed as ``<name>_total``; ``_created`` series
are not exposed. Not thread-safe: both services update and serve their metrics on the event loop's
thread only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import ClassVar, Generic, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: Python's float repr, with Go's Inf and NaN."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


class Registry:
    """The metrics of one process (or one test): what ``/metrics`` shows, in creation order."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric[_Series]] = {}

    def register(self, metric: _Metric[_Series]) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"a metric named {metric.name!r} is already registered")
        self._metrics[metric.name] = metric

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every sample as (exposed name, labels, value)."""
        for metric in self._metrics.values():
            yield from metric.samples()

    def get_sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The value of the sample ``name`` (as exposed, e.g. ``x_total``) with exactly these
        labels, or None when there is no such sample (as in prometheus_client)."""
        wanted = dict(labels or {})
        for sample_name, sample_labels, value in self.samples():
            if sample_name == name and sample_labels == wanted:
                return value
        return None

    def exposition(self) -> bytes:
        """The text page Prometheus scrapes."""
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.append(f"# HELP {metric.exposed_name} {_escape_help(metric.documentation)}")
            lines.append(f"# TYPE {metric.exposed_name} {metric.kind}")
            for name, labels, value in metric.samples():
                if labels:
                    pairs = ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in labels.items())
                    lines.append(f"{name}{{{pairs}}} {format_value(value)}")
                else:
                    lines.append(f"{name} {format_value(value)}")
        return ("\n".join(lines) + "\n").encode() if lines else b""


class _Series:
    """One label combination of a metric; holds nothing but where its value lives."""

    __slots__ = ("_key", "_name", "_values")

    def __init__(self, name: str, values: dict[tuple[str, ...], float], key: tuple[str, ...]):
        self._name = name
        self._values = values
        self._key = key
        values.setdefault(key, 0.0)

    @property
    def value(self) -> float:
        return self._values[self._key]


class CounterSeries(_Series):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"counters only go up; {self._name} cannot be increased by {amount}")
        self._values[self._key] += amount


class GaugeSeries(_Series):
    __slots__ = ()

    def set(self, value: float) -> None:
        self._values[self._key] = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self._values[self._key] += amount

    def dec(self, amount: float = 1.0) -> None:
        self._values[self._key] -= amount


# Covariant so that the registry can hold a Counter and a Gauge as _Metric[_Series].
_SeriesT = TypeVar("_SeriesT", bound=_Series, covariant=True)


class _Metric(Generic[_SeriesT]):
    kind: ClassVar[str]
    suffix: ClassVar[str] = ""
    # The series class of this kind of metric (set by each subclass).
    _series_type: type[_SeriesT]

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: Registry,
    ) -> None:
        if self.suffix:
            name = name.removesuffix(self.suffix)
        if not _METRIC_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid metric name")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"{label!r} is not a valid label name for {name}")
        self.name = name
        self.exposed_name = name + self.suffix
        self.documentation = documentation
        self._labelnames = tuple(labelnames)
        # Label combination -> value. An unlabelled metric has its one series from the start; a
        # labelled one gets each series on first use (as in prometheus_client).
        self._values: dict[tuple[str, ...], float] = {}
        self._series = None if self._labelnames else self._series_type(self.name, self._values, ())
        registry.register(self)

    def labels(self, *values: str, **by_name: str) -> _SeriesT:
        """The series with these label values, by position or by name (not both)."""
        return self._series_type(self.name, self._values, self._key(values, by_name))

    def _key(self, values: tuple[str, ...], by_name: dict[str, str]) -> tuple[str, ...]:
        if not self._labelnames:
            raise ValueError(f"{self.name} has no labels")
        if values and by_name:
            raise ValueError("pass label values by position or by name, not both")
        if by_name:
            if set(by_name) != set(self._labelnames):
                raise ValueError(f"{self.name} needs the labels {', '.join(self._labelnames)}")
            values = tuple(by_name[label] for label in self._labelnames)
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self.name} needs {len(self._labelnames)} label values")
        return tuple(str(value) for value in values)

    def _unlabelled(self) -> _SeriesT:
        if self._series is None:
            raise ValueError(f"{self.name} has labels: pick a series with .labels(...) first")
        return self._series

    @property
    def value(self) -> float:
        return self._unlabelled().value

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for key, value in self._values.items():
            yield self.exposed_name, dict(zip(self._labelnames, key, strict=True)), value


class Counter(_Metric[CounterSeries]):
    """Only goes up; exposed as ``<name>_total`` (a given ``_total`` suffix is not doubled)."""

    kind = "counter"
    suffix = "_total"
    _series_type = CounterSeries

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)


class Gauge(_Metric[GaugeSeries]):
    kind = "gauge"
    _series_type = GaugeSeries

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)
