"""The webhook's settings: GVIRTUS_KAI_* variables parsed and validated."""

from __future__ import annotations

import os

import pytest
from gvirtus_kai_webhook.settings import Nameserver, Settings
from pydantic import ValidationError


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GVIRTUS_KAI_"):
            monkeypatch.delenv(name)


def test_nameservers_accept_ipv4_ipv6_and_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_DNS_NAMESERVERS", "10.96.0.10, 127.0.0.1:5353,[::1]:53,fd00::a")
    assert Settings().dns_nameservers == (
        Nameserver(host="10.96.0.10", port=53),
        Nameserver(host="127.0.0.1", port=5353),
        Nameserver(host="::1", port=53),
        Nameserver(host="fd00::a", port=53),
    )


@pytest.mark.parametrize("entry", ["dns.example", "127.0.0.1:0", "127.0.0.1:70000", "[::1]:x"])
def test_a_bad_nameserver_is_rejected_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_DNS_NAMESERVERS", entry)
    with pytest.raises(ValidationError, match="dns_nameservers"):
        Settings()


def test_plugins_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_PLUGINS", " cudart , cublas,")
    assert Settings().plugins == ("cudart", "cublas")


def test_an_empty_plugin_list_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_PLUGINS", " , ")
    with pytest.raises(ValidationError, match="at least one GVirtuS plugin"):
        Settings()


def test_frontend_label_is_split_into_key_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_FRONTEND_LABEL", "example.com/gvirtus-frontend=yes")
    settings = Settings()
    assert (settings.frontend_label_key, settings.frontend_label_value) == (
        "example.com/gvirtus-frontend",
        "yes",
    )


@pytest.mark.parametrize(
    ("label", "reason"),
    [
        ("gvirtus.io/frontend.allowed", "form key=value"),
        ("Gvirtus.IO/frontend=true", "lower-case DNS subdomain"),
        ("gvirtus.io/-frontend=true", "must be alphanumeric"),
        ("gvirtus.io/frontend=" + "x" * 64, "longer than 63"),
    ],
)
def test_an_invalid_frontend_label_is_rejected_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, label: str, reason: str
) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_FRONTEND_LABEL", label)
    with pytest.raises(ValidationError, match=reason):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GVIRTUS_KAI_STRATEGY", "copy"),
        ("GVIRTUS_KAI_DEFAULT_GVIRTUS_HOME", "usr/local/gvirtus"),
        ("GVIRTUS_KAI_BACKEND_HOST", "Not A Host"),
        ("GVIRTUS_KAI_BACKEND_PORT", "0"),
        ("GVIRTUS_KAI_DNS_TIMEOUT_SECONDS", "0"),
        ("GVIRTUS_KAI_LOG_LEVEL", "chatty"),
    ],
)
def test_invalid_values_are_rejected_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    field = name.removeprefix("GVIRTUS_KAI_").lower()
    with pytest.raises(ValidationError, match=field):
        Settings()


def test_home_loses_its_trailing_slash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_DEFAULT_GVIRTUS_HOME", "/opt/gvirtus/")
    assert Settings().default_gvirtus_home == "/opt/gvirtus"


def test_an_invalid_enable_label_key_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_ENABLE_LABEL", "gvirtus.io/")
    with pytest.raises(ValidationError, match="enable_label"):
        Settings()


@pytest.mark.parametrize("placement", ["controller", "dns"])
def test_placement_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, placement: str
) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_PLACEMENT", placement)
    assert Settings().placement == placement


def test_an_unknown_placement_is_rejected_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GVIRTUS_KAI_PLACEMENT", "nearest")
    with pytest.raises(ValidationError, match="placement"):
        Settings()
