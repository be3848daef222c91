"""Pod-create latency of a real kube-apiserver with and without our webhook in the path
(``make bench``).

The test control plane of ``tests/cluster`` (etcd, kube-apiserver, controller-manager, scheduler;
binaries from ``$KUBEBUILDER_ASSETS`` or ``make tools``), the chart installed by the real ``helm``
and the real ``gvirtus-webhook`` process serving it, reached by the API server exactly as in the
cluster tests. The same labelled pod is created, one request at a time over one keep-alive
connection, alternately in a namespace the webhook is called for and in one that opted out (the
API server then never calls it), so both series see the same machine load. Only the webhook
differs between them: every pod carries a scheduling gate of the benchmark's own, so the
scheduler binds none, and the placement controller is stopped (``bench/controller.py`` measures
it), since its work on one series' pods would compete for the same CPUs during the other's
creates.

What the webhook adds is read two ways: the difference between the two series' p99, judged
against the target (end to end, so it carries the machine's noise too: single rounds of 1,000
creates moved by about 1.5 ms on a 2-core machine, so the median of three rounds is judged and
every round is shown); and, shown beside it,
the API server's own measurement of each webhook call
(``apiserver_admission_webhook_admission_duration_seconds``): the share of calls within its 5 ms
bucket, which is 99% or more exactly when the calls' own p99 is at most 5 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from gvirtus_kai_common.gvirtus import BACKEND_GATE

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import exit_status, info, percentile, row  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402
from tests.cluster.kube import NODES, Cluster  # noqa: E402
from tests.cluster.release import Release, ensure_namespace  # noqa: E402
from tests.dnsserver import LoopbackDnsServer  # noqa: E402

TARGET_ADDED_P99_MS = 5.0
WEBHOOK_METRIC = "apiserver_admission_webhook_admission_duration_seconds_bucket"
WARM_UP = 20
WITH, WITHOUT = "bench-webhook", "bench-opted-out"
HOLD_GATE = "bench.gvirtus.io/hold"  # never removed: no pod of either series is scheduled


def pod(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"gvirtus.io/enabled": "true"}},
        "spec": {
            "schedulingGates": [{"name": HOLD_GATE}],
            "containers": [
                {
                    "name": "cuda",
                    "image": "registry.example.com/cuda-app:1",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }


def measure(plane: ControlPlane, creates: int, round_: int) -> dict[str, list[float]]:
    """Milliseconds per create, per namespace; alternating so both share the machine's state."""
    timings: dict[str, list[float]] = {WITH: [], WITHOUT: []}
    with httpx.Client(base_url=plane.server, verify=plane.admin_tls_context()) as http:
        for index in range(WARM_UP + creates):
            for namespace in (WITH, WITHOUT):
                name = f"p-{round_}-{index}"
                started = time.perf_counter()
                answer = http.post(f"/api/v1/namespaces/{namespace}/pods", json=pod(name))
                elapsed = time.perf_counter() - started
                answer.raise_for_status()
                if index >= WARM_UP:
                    timings[namespace].append(elapsed * 1000)
    return timings


@dataclass
class Round:
    with_p50: float
    with_p99: float
    without_p50: float
    without_p99: float

    @classmethod
    def of(cls, timings: dict[str, list[float]]) -> Round:
        return cls(
            statistics.median(timings[WITH]),
            percentile(timings[WITH], 0.99),
            statistics.median(timings[WITHOUT]),
            percentile(timings[WITHOUT], 0.99),
        )

    @property
    def added_p50(self) -> float:
        return self.with_p50 - self.without_p50

    @property
    def added_p99(self) -> float:
        return self.with_p99 - self.without_p99


def webhook_call_buckets(plane: ControlPlane) -> dict[str, float]:
    """Cumulative counts of the API server's histogram of our webhook's calls, by upper bound."""
    with httpx.Client(base_url=plane.server, verify=plane.admin_tls_context()) as http:
        text = http.get("/metrics").text
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(WEBHOOK_METRIC) and 'name="pods.gvirtus.io"' in line:
            bound = line.split('le="')[1].split('"')[0]
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def check_mutation(cluster: Cluster) -> None:
    """The series differ only by the webhook: it mutated one namespace's pods, not the other's."""
    for namespace, mutated in ((WITH, True), (WITHOUT, False)):
        stored = cluster.get_json("pod", "p-0-0", "-n", namespace)
        annotations = stored["metadata"].get("annotations", {})
        gates = {gate["name"] for gate in stored["spec"].get("schedulingGates", [])}
        if ("gvirtus.io/properties" in annotations or BACKEND_GATE in gates) != mutated:
            raise RuntimeError(f"pods in {namespace} were {'not ' if mutated else ''}mutated")


def bench(creates: int, rounds: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="apiserver-bench-") as work:
        plane = ControlPlane(Path(work) / "control-plane").start()
        dns = LoopbackDnsServer().start()
        cluster = Cluster(plane, dns)
        release = Release(cluster)
        try:
            for node in NODES:
                cluster.add_node(node)
            release.install({"webhook.logLevel": "warning"})
            release.start_webhook(Path(work))
            release.stop_controller()
            ensure_namespace(cluster, WITH)
            ensure_namespace(cluster, WITHOUT, {"gvirtus.io/injection": "disabled"})
            before, buckets_before = release.admissions(), webhook_call_buckets(plane)
            results = [Round.of(measure(plane, creates, number)) for number in range(rounds)]
            called = release.admissions() - before
            buckets = webhook_call_buckets(plane)
            check_mutation(cluster)
        finally:
            release.stop_processes()
            dns.stop()
            plane.stop()
    expected = rounds * (WARM_UP + creates)
    if called != expected:
        raise RuntimeError(f"the webhook answered {called:.0f} reviews, not {expected}")
    # The round with the median p99 difference, with its own p50s and p99s beside it.
    judged = sorted(results, key=lambda result: result.added_p99)[(rounds - 1) // 2]
    calls = buckets["+Inf"] - buckets_before.get("+Inf", 0.0)
    within_5ms = buckets["0.005"] - buckets_before.get("0.005", 0.0)
    each = ", ".join(f"{result.added_p99:.2f}" for result in results)
    return [
        row(f"pod create p50, webhook in the path ({creates})", judged.with_p50, "ms"),
        row(f"pod create p99, webhook in the path ({creates})", judged.with_p99, "ms"),
        row(f"pod create p50, no webhook ({creates})", judged.without_p50, "ms"),
        row(f"pod create p99, no webhook ({creates})", judged.without_p99, "ms"),
        row("added by the webhook, p50", judged.added_p50, "ms"),
        row(f"added by the webhook, p99 (median of {rounds} rounds)", judged.added_p99, "ms",
            TARGET_ADDED_P99_MS),
        info("  the rounds, p99 added", f"{each} ms"),
        row("webhook calls the API server measured", calls, ""),
        row("  share of them within 5 ms", 100 * within_5ms / calls, "%"),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=1000, help="pods per series (>= 200)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (odd)")
    args = parser.parse_args()
    print("kube-apiserver pod creates (real API server, chart-installed webhook, loopback)")
    rows = bench(args.creates, args.rounds)
    print("\n".join(rows))
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
