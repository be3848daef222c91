"""The cluster DNS of the real-node tier: a DNS server (dnslib, UDP and TCP) on the host's bridge
address that answers Service names as CoreDNS's kubernetes plugin does.

``<service>.<namespace>.svc.<domain>``: the ClusterIP, or for a headless Service the IPv4 addresses
of its ready endpoints; any other name is NXDOMAIN (the nodes have no way out, so there is nothing
to forward to). The answers follow the API: Services and EndpointSlices are listed again every
half second, so a new pod or Service is answered within about a second. Run as a process:

    python -m tests.node.clusterdns --kubeconfig admin.kubeconfig --listen 172.30.0.1:53
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Service
from lightkube.resources.discovery_v1 import EndpointSlice

TTL = 5  # CoreDNS's default for Service records
REFRESH_SECONDS = 0.5


class ServiceResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, domain: str) -> None:
        self.domain = domain.strip(".")
        self.records: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def update(self, client: Client) -> None:
        ready: dict[tuple[str, str], list[str]] = {}
        for endpoint_slice in client.list(EndpointSlice, namespace="*"):
            metadata = endpoint_slice.metadata
            service = (
                (metadata.labels or {}).get("kubernetes.io/service-name") if metadata else None
            )
            if not service or endpoint_slice.addressType != "IPv4":
                continue
            namespace = (metadata.namespace if metadata else None) or ""
            for endpoint in endpoint_slice.endpoints or []:
                if endpoint.conditions is not None and endpoint.conditions.ready is False:
                    continue
                ready.setdefault((namespace, service), []).extend(endpoint.addresses)
        records: dict[str, list[str]] = {}
        for service in client.list(Service, namespace="*"):
            if service.metadata is None or service.spec is None:
                continue
            key = (service.metadata.namespace or "", service.metadata.name or "")
            cluster_ip = service.spec.clusterIP
            addresses = [cluster_ip] if cluster_ip and cluster_ip != "None" else ready.get(key, [])
            records[f"{key[1]}.{key[0]}.svc.{self.domain}"] = sorted(set(addresses))
        with self.lock:
            self.records = records

    def resolve(self, request: Any, handler: Any) -> Any:
        name = str(request.q.qname).rstrip(".").lower()
        reply = request.reply()
        with self.lock:
            addresses = self.records.get(name)
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif QTYPE[request.q.qtype] == "A":
            for address in addresses:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=TTL))
        return reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--listen", required=True, help="ip:port")
    parser.add_argument("--domain", default="cluster.local")
    options = parser.parse_args()
    host, port = options.listen.rsplit(":", 1)
    client = Client(KubeConfig.from_file(options.kubeconfig), field_manager="cluster-dns")
    resolver = ServiceResolver(options.domain)
    resolver.update(client)
    logger = DNSLogger("-recv,-send,-request,-reply,-truncated,-error,-data", prefix=False)
    servers = [
        DNSServer(resolver, address=host, port=int(port), tcp=tcp, logger=logger)
        for tcp in (False, True)
    ]
    for server in servers:
        server.start_thread()
    print(f"cluster DNS serving on {options.listen}", flush=True)
    while True:
        time.sleep(REFRESH_SECONDS)
        try:
            resolver.update(client)
        except Exception as error:
            print(f"cluster DNS: refresh failed: {error}", flush=True)


if __name__ == "__main__":
    main()
