"""The GVirtuS frontend configuration both placement paths write into pods."""

from __future__ import annotations

import json
import re

import pytest
from gvirtus_kai_common.gvirtus import (
    DEFAULT_PLUGINS,
    DEFAULT_THREADS,
    MAX_THREADS,
    frontend_config,
    parse_threads,
    properties_json,
    split_plugins,
)

ENTRY = {
    "endpoint": {
        "suite": "tcp/ip",
        "protocol": "tcp",
        "server_address": "10.96.0.42",
        "port": "34567",
    },
    "plugins": ["cudart", "cublas"],
}


def test_frontend_config_repeats_one_tcp_communicator_once_per_thread() -> None:
    # GVirtuS gives the k-th thread of a process communicator[k]; all of them one backend.
    assert frontend_config("10.96.0.42", 34567, ["cudart", "cublas"], 3) == {
        "communicator": [ENTRY, ENTRY, ENTRY],
        "secure_application": False,
    }


def test_frontend_config_covers_the_default_thread_count_unless_told() -> None:
    config = frontend_config("10.96.0.42", "34567", ["cudart", "cublas"])
    assert config["communicator"] == [ENTRY] * DEFAULT_THREADS


def test_the_port_is_a_json_string_in_every_entry() -> None:
    # A JSON number there aborts the GVirtuS frontend.
    config = json.loads(properties_json("10.0.0.7", 9999, DEFAULT_PLUGINS, 4))
    assert {entry["endpoint"]["port"] for entry in config["communicator"]} == {"9999"}


def test_the_default_annotation_stays_small() -> None:
    text = properties_json("255.255.255.255", 65535, DEFAULT_PLUGINS)
    assert len(text.encode()) < 200 * DEFAULT_THREADS


@pytest.mark.parametrize(("value", "threads"), [("1", 1), ("16", 16), (" 64 ", 64), ("512", 512)])
def test_a_thread_count_annotation_is_read(value: str, threads: int) -> None:
    assert parse_threads(value) == threads


@pytest.mark.parametrize("value", ["0", "-1", "513", "4.5", "many", "", "\u0661\u0662", "1e3"])
def test_a_bad_thread_count_annotation_is_refused_saying_what_fits(value: str) -> None:
    expected = f"gvirtus.io/threads={value!r} must be a whole number from 1 to {MAX_THREADS}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        parse_threads(value)


def test_properties_json_is_the_compact_text_of_the_config() -> None:
    text = properties_json("10.0.0.7", 9999, DEFAULT_PLUGINS)
    assert " " not in text
    assert json.loads(text) == frontend_config("10.0.0.7", "9999", DEFAULT_PLUGINS, DEFAULT_THREADS)


@pytest.mark.parametrize("threads", [1, 2, 32, MAX_THREADS])
def test_properties_json_is_exactly_the_encoders_text_of_the_config(threads: int) -> None:
    # The sed wrapper writes the same bytes, and a pod's annotation must not change when the
    # webhook or the controller writes it: the text is the one a JSON encoder gives.
    config = frontend_config("10.0.0.7", "9999", DEFAULT_PLUGINS, threads)
    expected = json.dumps(config, separators=(",", ":"))
    assert properties_json("10.0.0.7", 9999, DEFAULT_PLUGINS, threads) == expected


def test_properties_json_is_byte_identical_for_the_same_backend() -> None:
    # The webhook and the controller each build it; a pod must not change when either writes it.
    assert properties_json("10.0.0.7", 9999, ("cudart",)) == properties_json(
        "10.0.0.7", "9999", ["cudart"]
    )


def test_plugins_are_split_on_commas_and_trimmed() -> None:
    assert split_plugins(" cudart, cublas ,,") == ("cudart", "cublas")


def test_an_empty_plugin_list_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one GVirtuS plugin"):
        split_plugins(" , ")
