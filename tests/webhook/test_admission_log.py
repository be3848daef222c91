"""The per-admission log line: written directly when only the JSON handler would see it."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from gvirtus_kai_common.logs import log_fields, setup_logging, utc_timestamp
from hypothesis import given
from hypothesis import strategies as st

FIELDS = {
    "uid": "u-1",
    "namespace": "ml",
    "pod": "trainer-",
    "outcome": "mutated",
    "duration_ms": 0.2,
}


@pytest.fixture
def json_logging() -> Iterator[Callable[[str], io.StringIO]]:
    """setup_logging() at a level, its stream swapped for a buffer; restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level

    def configure(level: str) -> io.StringIO:
        setup_logging(level)
        buffer = io.StringIO()
        (handler,) = root.handlers
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
        return buffer

    yield configure
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_direct_line_has_the_same_shape_as_a_logged_record(
    json_logging: Callable[[str], io.StringIO],
) -> None:
    stderr = json_logging("info")
    logger = logging.getLogger("gvirtus_kai_webhook.admission")
    log_fields(logger, "admission", FIELDS)
    logger.info("admission", extra=FIELDS)
    direct, recorded = lines(stderr)
    assert direct.keys() == recorded.keys()
    assert {k: v for k, v in direct.items() if k != "time"} == {
        k: v for k, v in recorded.items() if k != "time"
    }


def test_nothing_is_written_below_the_level(json_logging: Callable[[str], io.StringIO]) -> None:
    stderr = json_logging("warning")
    log_fields(logging.getLogger("gvirtus_kai_webhook.admission"), "admission", FIELDS)
    assert stderr.getvalue() == ""


def test_other_handlers_get_a_normal_record(json_logging: Callable[[str], io.StringIO]) -> None:
    stderr = json_logging("info")
    capture = _Capture()
    logging.getLogger().addHandler(capture)
    log_fields(logging.getLogger("gvirtus_kai_webhook.admission"), "admission", FIELDS)
    (record,) = capture.records
    assert record.getMessage() == "admission"
    assert record.__dict__["uid"] == "u-1"
    assert len(lines(stderr)) == 1  # and the JSON handler still wrote its line once


def _isoformat(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


@pytest.mark.parametrize(
    "seconds",
    [0.0, 1.5, 951782400.001, 1700000000.123456, 1700000000.999, 1704067199.5, 4102444800.25],
)
def test_timestamp_is_iso_8601_utc_in_milliseconds(seconds: float) -> None:
    assert utc_timestamp(seconds) == _isoformat(seconds)


# Milliseconds whole, plus a fraction of one that neither format may round up.
@given(
    whole_ms=st.integers(min_value=-(10**12), max_value=4 * 10**12),
    fraction=st.floats(min_value=0.1, max_value=0.9),
)
def test_timestamp_agrees_with_datetime_across_seconds(whole_ms: int, fraction: float) -> None:
    seconds = (whole_ms + fraction) / 1000
    assert utc_timestamp(seconds) == _isoformat(seconds)


def test_direct_line_carries_the_current_utc_time(
    json_logging: Callable[[str], io.StringIO],
) -> None:
    stderr = json_logging("info")
    before = time.time()
    log_fields(logging.getLogger("gvirtus_kai_webhook.admission"), "admission", FIELDS)
    after = time.time()
    (line,) = lines(stderr)
    logged = datetime.fromisoformat(str(line["time"])).timestamp()
    assert before - 0.001 <= logged <= after
