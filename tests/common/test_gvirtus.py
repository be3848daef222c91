"""The GVirtuS frontend configuration both placement paths write into pods."""

from __future__ import annotations

import json

import pytest
from gvirtus_kai_common.gvirtus import (
    DEFAULT_PLUGINS,
    frontend_config,
    properties_json,
    split_plugins,
)


def test_frontend_config_is_one_tcp_communicator_with_string_port_and_plugins() -> None:
    assert frontend_config("10.96.0.42", 34567, ["cudart", "cublas"]) == {
        "communicator": [
            {
                "endpoint": {
                    "suite": "tcp/ip",
                    "protocol": "tcp",
                    "server_address": "10.96.0.42",
                    "port": "34567",
                },
                "plugins": ["cudart", "cublas"],
            }
        ],
        "secure_application": False,
    }


def test_properties_json_is_the_compact_text_of_the_config() -> None:
    text = properties_json("10.0.0.7", 9999, DEFAULT_PLUGINS)
    assert " " not in text
    assert json.loads(text) == frontend_config("10.0.0.7", "9999", DEFAULT_PLUGINS)


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
