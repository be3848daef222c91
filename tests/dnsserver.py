"""A real DNS server on 127.0.0.1 (UDP, dnslib) whose answers the test controls.

Used by the webhook tests, the CLI tests and ``make demo``::

    with LoopbackDnsServer() as server:
        server.set_a("gvirtus-backend.gvirtus-system.svc.cluster.local", "10.96.0.42", ttl=1)
        ... point GVIRTUS_KAI_DNS_NAMESERVERS at server.nameserver ...
        assert server.query_count("gvirtus-backend...", "A") == 1
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSError
from dnslib.server import BaseResolver, DNSLogger, DNSServer

Behaviour = Literal["answer", "nxdomain", "empty", "silent"]


@dataclass
class _Name:
    behaviour: Behaviour
    a: list[str] = field(default_factory=list)
    aaaa: list[str] = field(default_factory=list)
    ttl: int = 30


_NO_LOGGING = "-recv,-send,-request,-reply,-truncated,-error,-data"


def _key(name: str) -> str:
    return name.rstrip(".").lower()


class _ControlledResolver(BaseResolver):  # type: ignore[misc]
    """Answers from a table the test edits; unknown names are NXDOMAIN."""

    def __init__(self) -> None:
        self.names: dict[str, _Name] = {}
        self.queries: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()

    def resolve(self, request: Any, handler: Any) -> Any:
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        with self.lock:
            self.queries[(_key(qname), qtype)] += 1
            entry = self.names.get(_key(qname))
        reply = request.reply()
        if entry is None or entry.behaviour == "nxdomain":
            reply.header.rcode = RCODE.NXDOMAIN
        elif entry.behaviour == "silent":
            raise DNSError("configured to never answer")  # dnslib then sends nothing
        elif entry.behaviour == "answer":
            if qtype == "A":
                for address in entry.a:
                    reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=entry.ttl))
            elif qtype == "AAAA":
                for address in entry.aaaa:
                    reply.add_answer(RR(qname, QTYPE.AAAA, rdata=AAAA(address), ttl=entry.ttl))
        return reply  # "empty": NOERROR without answers


class LoopbackDnsServer:
    """A UDP DNS server on 127.0.0.1 and a random free port, served from a thread."""

    def __init__(self) -> None:
        self._resolver = _ControlledResolver()
        quiet = DNSLogger(log=_NO_LOGGING)
        self._server = DNSServer(self._resolver, address="127.0.0.1", port=0, logger=quiet)

    @property
    def port(self) -> int:
        return int(self._server.server.server_address[1])

    @property
    def nameserver(self) -> str:
        """The value for ``GVIRTUS_KAI_DNS_NAMESERVERS``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> LoopbackDnsServer:
        # A short poll interval: stop() waits up to one interval for the serving thread.
        serve = self._server.server.serve_forever
        self._thread = threading.Thread(target=serve, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.server.shutdown()
        self._server.server.server_close()
        self._thread.join()

    def __enter__(self) -> LoopbackDnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _set(self, name: str, entry: _Name) -> None:
        with self._resolver.lock:
            self._resolver.names[_key(name)] = entry

    def set_a(self, name: str, *addresses: str, ttl: int = 30) -> None:
        self._set(name, _Name("answer", a=list(addresses), ttl=ttl))

    def set_aaaa(self, name: str, *addresses: str, ttl: int = 30) -> None:
        self._set(name, _Name("answer", aaaa=list(addresses), ttl=ttl))

    def set_dual_stack(self, name: str, a: list[str], aaaa: list[str], ttl: int = 30) -> None:
        """The name has both A and AAAA records (a dual-stack headless Service)."""
        self._set(name, _Name("answer", a=list(a), aaaa=list(aaaa), ttl=ttl))

    def set_nxdomain(self, name: str) -> None:
        self._set(name, _Name("nxdomain"))

    def set_empty(self, name: str) -> None:
        """The name exists but has no A or AAAA record (NOERROR, no answer)."""
        self._set(name, _Name("empty"))

    def set_silent(self, name: str) -> None:
        """Queries for the name are received and never answered (a resolver timeout)."""
        self._set(name, _Name("silent"))

    def query_count(self, name: str, record_type: str | None = None) -> int:
        with self._resolver.lock:
            return sum(
                count
                for (qname, qtype), count in self._resolver.queries.items()
                if qname == _key(name) and record_type in (None, qtype)
            )


if __name__ == "__main__":
    # ``python tests/dnsserver.py NAME=IP ...``: serve until interrupted (the benchmark runs it
    # in its own process so it does not share the webhook's CPU core).
    import sys
    import time

    with LoopbackDnsServer() as standalone:
        for spec in sys.argv[1:]:
            host, _, ip = spec.partition("=")
            standalone.set_a(host, ip, ttl=3600)
        print(standalone.nameserver, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
