"""JSON-lines logging shared by the services: one parseable object per line, extras included."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from gvirtus_kai_common import logs
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    saved_handlers, saved_level = logging.root.handlers[:], logging.root.level
    logs.setup_logging("info")
    yield stream
    logging.root.handlers[:] = saved_handlers
    logging.root.setLevel(saved_level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_object_with_level_logger_message_and_extras(
    stderr: io.StringIO,
) -> None:
    logging.getLogger("gvirtus.test").warning("node %s labelled", "n1", extra={"key": "a/b"})
    [entry] = _lines(stderr)
    assert entry["level"] == "warning"
    assert entry["logger"] == "gvirtus.test"
    assert entry["msg"] == "node n1 labelled"
    assert entry["key"] == "a/b"
    assert str(entry["time"]).endswith("+00:00")


def test_records_below_the_level_are_dropped(stderr: io.StringIO) -> None:
    logging.getLogger("gvirtus.test").debug("noise")
    assert stderr.getvalue() == ""


def test_an_exception_is_logged_inside_the_same_line(stderr: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("gvirtus.test").exception("failed")
    [entry] = _lines(stderr)
    assert "RuntimeError: boom" in str(entry["exc"])


def test_values_json_cannot_encode_are_written_as_text(stderr: io.StringIO) -> None:
    logging.getLogger("gvirtus.test").info("odd", extra={"value": {1, 2}.__class__})
    [entry] = _lines(stderr)
    assert entry["value"] == "<class 'set'>"


def _isoformat(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


@pytest.mark.parametrize(
    "seconds",
    [0.0, 1.5, 951782400.001, 1700000000.123456, 1700000000.999, 1704067199.5, 4102444800.25],
)
def test_timestamp_is_iso_8601_utc_in_milliseconds(seconds: float) -> None:
    assert logs.utc_timestamp(seconds) == _isoformat(seconds)


# Milliseconds whole, plus a fraction of one that neither format may round up.
@given(
    whole_ms=st.integers(min_value=-(10**12), max_value=4 * 10**12),
    fraction=st.floats(min_value=0.1, max_value=0.9),
)
def test_timestamp_agrees_with_datetime_across_seconds(whole_ms: int, fraction: float) -> None:
    seconds = (whole_ms + fraction) / 1000
    assert logs.utc_timestamp(seconds) == _isoformat(seconds)


def test_short_text_is_not_clipped() -> None:
    assert logs.clip("trainer-7d4b9") == "trainer-7d4b9"


def test_long_text_is_clipped_saying_how_long_it_was() -> None:
    clipped = logs.clip("x" * 200_000)
    assert clipped.startswith("x" * logs.CLIP_CHARS + "…")
    assert clipped.endswith("(clipped, 200000 characters in all)")
    assert len(clipped) < logs.CLIP_CHARS + 50
