"""The kernel's TCP socket tables (``/proc/net/tcp`` and ``tcp6``) read as one port's load.

GVirtuS never closes a connection it accepted, so nothing here connects to its port: the tables
show its listening socket and every connection without touching it. Each line holds the local and
remote address as ``HEX_ADDRESS:HEX_PORT`` and the state as two hex digits. The port is big-endian
hex; the address is the kernel's in-memory bytes printed one 32-bit word at a time in the
machine's order, so on the little-endian machines we run on each word reads reversed
(``0100007F`` is 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"
ESTABLISHED = "01"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PortLoad:
    """What the tables say about one port."""

    listening: bool
    connections: int
    clients: tuple[str, ...]  # distinct remote addresses, IPv4 before IPv6, in numeric order


def _word_order(word: bytes) -> bytes:
    return word[::-1] if sys.byteorder == "little" else word


def decode_address(text: str) -> Address:
    """A table's hex address (8 digits for IPv4, 32 for IPv6); an IPv4-mapped IPv6 address is
    returned as the IPv4 address it carries, as clients of a dual-stack listener are known."""
    raw = bytes.fromhex(text)
    if len(raw) not in (4, 16):
        raise ValueError(f"not a socket table address: {text!r}")
    packed = b"".join(_word_order(raw[i : i + 4]) for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(packed)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def port_load(tables: Iterable[str], port: int) -> PortLoad:
    """``port``'s load from the text of socket tables: LISTEN on it at all, and the ESTABLISHED
    connections whose local end is it (this pod's own connections out to that port, whose
    remote end is the port, are not the backend's clients)."""
    suffix = f":{port:04X}"
    listening = False
    connections = 0
    remotes: set[str] = set()
    for table in tables:
        for line in table.splitlines()[1:]:  # the first line names the columns
            fields = line.split(None, 4)
            if len(fields) < 4 or not fields[1].endswith(suffix):
                continue
            state = fields[3]
            if state == LISTEN:
                listening = True
            elif state == ESTABLISHED:
                connections += 1
                remotes.add(fields[2].partition(":")[0])
    clients = sorted({decode_address(remote) for remote in remotes}, key=_address_order)
    return PortLoad(listening, connections, tuple(str(client) for client in clients))


def _address_order(address: Address) -> tuple[int, int]:
    return address.version, int(address)


def read_tables(proc_net: Path) -> list[str]:
    """The text of ``tcp`` and ``tcp6`` under ``proc_net``; ``tcp6`` is left out where the
    kernel has none (IPv6 disabled), a missing ``tcp`` is an error (OSError)."""
    texts = [(proc_net / "tcp").read_text(encoding="ascii")]
    with contextlib.suppress(FileNotFoundError):
        texts.append((proc_net / "tcp6").read_text(encoding="ascii"))
    return texts
