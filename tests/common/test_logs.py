"""JSON-lines logging shared by the services: one parseable object per line, extras included."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from gvirtus_kai_common import logs


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


def test_log_fields_writes_the_same_object_as_a_record_would(stderr: io.StringIO) -> None:
    logger = logging.getLogger("gvirtus.test.admission")
    logs.log_fields(logger, "admission", {"uid": "u1", "outcome": "mutated"})
    logger.info("admission", extra={"uid": "u1", "outcome": "mutated"})
    direct, via_record = _lines(stderr)
    del direct["time"], via_record["time"]
    assert direct == via_record
