"""Labeler settings: the LABELS syntax and Kubernetes label rules, from the environment."""

from __future__ import annotations

import os
import re

import pytest
from gvirtus_kai_labeler.settings import Settings, parse_labels
from pydantic import ValidationError

from tests.labeler.support import DEFAULTS


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets counts, not the developer's shell."""
    for name in os.environ:
        if name.startswith("GVIRTUS_KAI_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_two_role_labels() -> None:
    assert Settings().labels == DEFAULTS
    assert (Settings().health_port, Settings().node_name) == (8080, "")


def test_settings_come_from_gvirtus_kai_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_NODE_NAME", "worker-1")
    monkeypatch.setenv("GVIRTUS_KAI_LABELS", "example.com/pool=remote")
    monkeypatch.setenv("GVIRTUS_KAI_HEALTH_PORT", "9090")
    monkeypatch.setenv("GVIRTUS_KAI_LOG_LEVEL", "DEBUG")

    settings = Settings()

    assert settings.node_name == "worker-1"
    assert settings.labels == {"example.com/pool": "remote"}
    assert (settings.health_port, settings.log_level) == (9090, "debug")


def test_labels_parse_with_spaces_empty_values_and_a_trailing_comma() -> None:
    assert parse_labels(" a=1 , example.com/b= ,c=x.y_z-1,") == {
        "a": "1",
        "example.com/b": "",
        "c": "x.y_z-1",
    }


def test_a_63_character_name_and_value_are_valid() -> None:
    assert parse_labels(f"{'k' * 63}={'v' * 63}") == {"k" * 63: "v" * 63}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("gvirtus.io/frontend.allowed", "'gvirtus.io/frontend.allowed': expected key=value"),
        ("a=1,b", "'b': expected key=value"),
        ("a=1,a=2", "'a=2': duplicate key 'a'"),
        ("-bad=1", "'-bad=1': invalid key"),
        ("Upper.Case/x=1", "'Upper.Case/x=1': invalid key: the prefix"),
        ("/x=1", "'/x=1': invalid key: the prefix before '/' is empty"),
        ("ok/=1", "'ok/=1': invalid key: the name is empty"),
        (f"{'k' * 64}=1", "invalid key: the name is longer than 63"),
        (f"{'p' * 254}/k=1", "invalid key: the prefix is longer than 253"),
        ("k=has space", "'k=has space': invalid value"),
        ("k=-lead", "'k=-lead': invalid value"),
        (f"k={'v' * 64}", "invalid value: the value is longer than 63"),
        ("", "no labels configured"),
        (" , ", "no labels configured"),
    ],
)
def test_a_malformed_entry_is_rejected_with_a_message_naming_it(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_labels(text)


def test_a_malformed_labels_variable_fails_settings_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_LABELS", "a=1,a=2")

    with pytest.raises(ValidationError, match="duplicate key 'a'"):
        Settings()
