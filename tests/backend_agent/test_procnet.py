"""The socket-table reader on tables the kernel wrote (fixtures/README.md says what they hold)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from gvirtus_kai_backend_agent.procnet import PortLoad, decode_address, port_load, read_tables

FIXTURES = Path(__file__).parent / "fixtures"


def load_of(name: str, port: int = 9999) -> PortLoad:
    return port_load(read_tables(FIXTURES / name), port)


def test_ipv4_listener_its_established_connections_and_distinct_clients() -> None:
    assert load_of("ipv4") == PortLoad(
        listening=True,
        connections=4,
        clients=("10.244.1.6", "10.244.2.17", "127.0.0.1"),
    )


def test_dual_stack_listener_reports_mapped_clients_as_ipv4_first() -> None:
    assert load_of("dual") == PortLoad(
        listening=True,
        connections=4,
        clients=("10.244.1.6", "127.0.0.1", "::1", "fd00:10:244:1::6"),
    )


def test_the_clients_own_ends_and_closed_connections_are_not_counted() -> None:
    # dual/tcp holds only connections out to 9999 and TIME_WAIT entries of it.
    ipv4_only = port_load([(FIXTURES / "dual" / "tcp").read_text()], 9999)

    assert ipv4_only == PortLoad(listening=False, connections=0, clients=())


@pytest.mark.parametrize("name", ["ipv4", "dual"])
def test_another_port_is_counted_apart(name: str) -> None:
    assert load_of(name, 8080) == PortLoad(
        listening=True, connections=1, clients=("127.0.0.1",) if name == "ipv4" else ("::1",)
    )


@pytest.mark.parametrize("name", ["ipv4", "dual"])
def test_a_port_nothing_uses_is_not_listening(name: str) -> None:
    assert load_of(name, 9998) == PortLoad(listening=False, connections=0, clients=())


def test_a_missing_tcp6_table_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text((FIXTURES / "ipv4" / "tcp").read_text())

    assert port_load(read_tables(tmp_path), 9999).connections == 4


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0100007F", "127.0.0.1"),
        ("0601F40A", "10.244.1.6"),
        ("00000000", "0.0.0.0"),
        ("00000000000000000000000001000000", "::1"),
        ("100000FD010044020000000006000000", "fd00:10:244:1::6"),
        ("0000000000000000FFFF00000601F40A", "10.244.1.6"),
    ],
)
def test_addresses_read_as_the_kernel_prints_them_word_by_word(text: str, address: str) -> None:
    assert decode_address(text) == ipaddress.ip_address(address)


def test_an_address_of_another_length_is_refused() -> None:
    with pytest.raises(ValueError, match="not a socket table address"):
        decode_address("0100007F00")


def test_a_missing_tcp_table_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "tcp6").write_text((FIXTURES / "dual" / "tcp6").read_text())

    with pytest.raises(FileNotFoundError):
        read_tables(tmp_path)
