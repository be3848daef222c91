"""Webhook throughput and latency over TLS, next to the original webhook's stack (``make bench``).

Both servers run in turn on CPU 0 (``taskset -c 0``); wrk, this script and the DNS server run on
the other CPU. wrk keeps connections alive and POSTs a realistic GPU pod AdmissionReview. The
baseline is ``bench/flask_webhook.py``, a stand-in for the original webhook's serving stack (Flask's
development server, TLS, DEBUG logging of every review and answer). Our webhook logs at
LOG_LEVEL=info, as deployed. The 16-connection runs alternate between the two servers and the
medians are compared, since other work on a shared machine moves single runs by several per cent;
the CPU share each server got is shown next to them. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import psutil
import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import info, row  # noqa: E402
from tests.tlsfiles import VERIFIED_NAME, SecretVolume, client_context, serving_cert  # noqa: E402
from tests.webhookproc import (  # noqa: E402
    BACKEND_HOST,
    WebhookProcess,
    api_server_client,
    free_port,
    start_webhook,
)

WORK = ROOT / ".bench" / "webhook"
REVIEW = ROOT / "tests" / "webhook" / "fixtures" / "reviews" / "pod-gpu-v1.json"
WEBHOOK_CPU, LOAD_CPU = 0, 1

TARGET_SPEEDUP_16 = 3.0  # our reviews/s over the baseline's, 16 connections
TARGET_P99_16_MS = 10.0
TARGET_P50_1_MS = 1.0
TARGET_RSS_MIB = 80.0
TARGET_SIGTERM_IDLE_S = 1.0  # SIGTERM to exit with an idle keep-alive client connected
BASELINE = ROOT / "bench" / "flask_webhook.py"
BACKEND_IP = "10.96.0.42"

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
SNI = {"sni_hostname": VERIFIED_NAME}

# The webhook runs from a venv holding only its runtime dependencies, as the image does. The
# development venv has more (e.g. httpx2 and h2 for the labeler's Kubernetes client), and dnspython
# loads its DNS-over-HTTPS client whenever those are importable: ~4 MiB the image never pays.
RUNTIME_VENV = WORK / "runtime-venv"
RUNTIME_INPUTS = (
    ROOT / "constraints.txt",
    ROOT / "services" / "common" / "pyproject.toml",
    ROOT / "services" / "webhook" / "pyproject.toml",
)


@dataclass
class WrkResult:
    connections: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def _wrk_script(body_file: Path) -> Path:
    script = WORK / "post-review.lua"
    script.write_text(
        f"""local f = assert(io.open("{body_file}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""
    )
    return script


def _latency_ms(output: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {percentile}% latency in wrk output:\n{output}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> WrkResult:
    command = ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{connections}"]
    command += [f"-d{seconds}s", "--latency", "-s", str(script), url]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors:.*", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(0)))
    return WrkResult(
        connections,
        float(rps.group(1)),
        _latency_ms(output, "50"),
        _latency_ms(output, "99"),
        errors,
    )


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def start_dns_server() -> tuple[subprocess.Popen[str], str]:
    """The loopback DNS server in its own process, on the load CPU."""
    process = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(LOAD_CPU),
            sys.executable,
            str(ROOT / "tests" / "dnsserver.py"),
            f"{BACKEND_HOST}={BACKEND_IP}",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    nameserver = process.stdout.readline().strip()
    return process, nameserver


def runtime_webhook() -> list[str]:
    """``gvirtus-webhook`` installed with its runtime dependencies only (rebuilt when they change).

    Editable, so the code measured is the working tree's; the dependency set is the image's.
    """
    stamp = RUNTIME_VENV / "inputs.sha256"
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in RUNTIME_INPUTS)).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        shutil.rmtree(RUNTIME_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(RUNTIME_VENV)], check=True)
        pip = [str(RUNTIME_VENV / "bin" / "pip"), "install", "--quiet"]
        subprocess.run(
            [*pip, "--disable-pip-version-check", "-c", str(ROOT / "constraints.txt"),
             "-e", str(ROOT / "services" / "common"), "-e", str(ROOT / "services" / "webhook")],
            check=True,
        )  # fmt: skip
        stamp.write_text(digest)
    return [str(RUNTIME_VENV / "bin" / "gvirtus-webhook")]


def median_run(results: list[WrkResult]) -> WrkResult:
    """The run with the median throughput (its latencies belong to that same run)."""
    ranked = sorted(results, key=lambda result: result.requests_per_second)
    return ranked[(len(ranked) - 1) // 2]


@dataclass
class Baseline:
    process: subprocess.Popen[bytes]
    port: int

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"


def start_baseline(volume: SecretVolume, log_file: IO[bytes]) -> Baseline:
    port = free_port()
    command = ["taskset", "-c", str(WEBHOOK_CPU), sys.executable, str(BASELINE), str(port)]
    command += [str(volume.cert_file), str(volume.key_file), BACKEND_IP]
    process = subprocess.Popen(command, stdout=log_file, stderr=log_file, start_new_session=True)
    return Baseline(process, port)


def wait_answering(url: str, context: ssl.SSLContext, process: subprocess.Popen[bytes]) -> None:
    """POST the review until it is answered 200 (or the process exits, or 30 s pass)."""
    deadline = time.monotonic() + 30
    with api_server_client(context, timeout=5.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{url} exited with {process.returncode}")
            try:
                headers = {"content-type": "application/json"}
                response = client.post(
                    url, content=REVIEW.read_bytes(), headers=headers, extensions=SNI
                )
                if response.status_code == 200 and "patch" in response.json()["response"]:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer a review within 30 s")
            time.sleep(0.1)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sigterm_with_idle_client(webhook: WebhookProcess, context: ssl.SSLContext) -> float:
    """Seconds from SIGTERM to exit while a client holds an idle keep-alive connection."""
    with (
        socket.create_connection(("127.0.0.1", webhook.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=VERIFIED_NAME) as tls,
    ):
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: webhook\r\n\r\n")
        if not tls.recv(4096).startswith(b"HTTP/1.1 200"):
            raise RuntimeError("the webhook did not answer /healthz")
        started = time.monotonic()
        webhook.process.send_signal(signal.SIGTERM)
        webhook.process.wait(30)
        return time.monotonic() - started


def bench(seconds: int, runs: int) -> tuple[list[str], bool]:
    """Measure both servers; the report lines, and whether every target was met."""
    ca = trustme.CA()
    volume = SecretVolume(WORK / "tls")
    volume.write(serving_cert(ca))
    context = client_context(ca)
    script = _wrk_script(REVIEW)
    dns_process, nameserver = start_dns_server()
    webhook_log = (WORK / "webhook.log").open("wb")
    baseline_log = (WORK / "baseline.log").open("wb")
    webhook: WebhookProcess | None = None
    baseline: Baseline | None = None
    try:
        webhook = start_webhook(
            {
                "TLS_CERT_FILE": str(volume.cert_file),
                "TLS_KEY_FILE": str(volume.key_file),
                "DNS_NAMESERVERS": nameserver,
                "PLACEMENT": "dns",  # pinned by DNS, like the original: the same work per review
                "LOG_LEVEL": "info",
            },
            stderr=webhook_log,
            prefix=["taskset", "-c", str(WEBHOOK_CPU)],
            command=runtime_webhook(),
        )
        ready_seconds = webhook.wait_ready(context)
        wait_answering(webhook.url("/mutate"), context, webhook.process)
        baseline = start_baseline(volume, baseline_log)
        wait_answering(baseline.url("/mutate"), context, baseline.process)
        ours_url, baseline_url = webhook.url("/mutate"), baseline.url("/mutate")
        run_wrk(ours_url, script, 16, 2)  # warm-up
        run_wrk(baseline_url, script, 16, 2)
        one = run_wrk(ours_url, script, 1, seconds)
        baseline_one = run_wrk(baseline_url, script, 1, seconds)
        ours_16: list[WrkResult] = []
        baseline_16: list[WrkResult] = []
        cpu_shares: list[float] = []
        baseline_shares: list[float] = []
        for _ in range(runs):
            cpu_before = _cpu_seconds(baseline.process.pid)
            baseline_16.append(run_wrk(baseline_url, script, 16, seconds))
            baseline_shares.append((_cpu_seconds(baseline.process.pid) - cpu_before) / seconds)
            cpu_before = _cpu_seconds(webhook.process.pid)
            ours_16.append(run_wrk(ours_url, script, 16, seconds))
            cpu_shares.append((_cpu_seconds(webhook.process.pid) - cpu_before) / seconds)
        ours, theirs = median_run(ours_16), median_run(baseline_16)
        cpu_share = statistics.median(cpu_shares)
        baseline_share = statistics.median(baseline_shares)
        rss_mib = psutil.Process(webhook.process.pid).memory_info().rss / 2**20
        errors = one.errors + sum(result.errors for result in ours_16)
        stop_process(baseline.process)
        sigterm_seconds = sigterm_with_idle_client(webhook, context)
    finally:
        if webhook is not None:
            webhook.stop()
        if baseline is not None:
            stop_process(baseline.process)
        dns_process.terminate()
        dns_process.wait()
        webhook_log.close()
        baseline_log.close()
    ours_per_cpu = ours.requests_per_second / max(cpu_share, 0.01)
    theirs_per_cpu = theirs.requests_per_second / max(baseline_share, 0.01)
    speedup = ours.requests_per_second / max(theirs.requests_per_second, 0.001)
    figures = [
        ("reviews/s vs baseline, 16 conns", speedup, TARGET_SPEEDUP_16, "x", True),
        ("p99 latency, 16 connections", ours.p99_ms, TARGET_P99_16_MS, "ms", False),
        ("p50 latency, 1 connection", one.p50_ms, TARGET_P50_1_MS, "ms", False),
        ("RSS after the runs", rss_mib, TARGET_RSS_MIB, "MiB", False),
        ("SIGTERM to exit, idle client open", sigterm_seconds, TARGET_SIGTERM_IDLE_S, "s", False),
        ("failed requests", float(errors), 0.0, "", False),
    ]
    lines = [f"webhook (runtime dependencies only, as in the image) vs baseline, {seconds}s runs:"]
    met = True
    for name, value, target, unit, higher_is_better in figures:
        line = row(name, value, unit, target, at_least=higher_is_better)
        met = met and line.lstrip().startswith("PASS")
        lines.append(line)
    ours_rps = ", ".join(f"{result.requests_per_second:.0f}" for result in ours_16)
    their_rps = ", ".join(f"{result.requests_per_second:.0f}" for result in baseline_16)
    lines += [
        info("ours: req/s, 16 connections", f"{ours.requests_per_second:.0f} ({ours_rps})"),
        info("baseline: req/s, 16 connections", f"{theirs.requests_per_second:.0f} ({their_rps})"),
        info("ours: p50, 16 connections", f"{ours.p50_ms:.3f} ms"),
        info("baseline: p50, p99, 16 connections", f"{theirs.p50_ms:.3f}, {theirs.p99_ms:.3f} ms"),
        info("ours: req/s, p99, 1 conn", f"{one.requests_per_second:.0f}, {one.p99_ms:.3f} ms"),
        info("baseline: req/s, p50, 1 connection",
             f"{baseline_one.requests_per_second:.0f}, {baseline_one.p50_ms:.3f} ms"),
        info("ours: ready after start", f"{ready_seconds:.3f} s"),
        # Other work on CPU 0 steals time from the servers; this shows how much each got.
        info("ours: CPU share, reviews/CPU-s", f"{cpu_share * 100:.0f} %, {ours_per_cpu:.0f}"),
        info(
            "baseline: CPU share, reviews/CPU-s",
            f"{baseline_share * 100:.0f} %, {theirs_per_cpu:.0f}",
        ),
    ]  # fmt: skip
    return lines, met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument(
        "--runs", type=int, default=3, help="16-connection runs per server; medians are compared"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("the benchmark needs two CPUs: one for the servers, one for the load")
    os.sched_setaffinity(0, {LOAD_CPU})
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    lines, met = bench(args.seconds, max(args.runs, 1))
    print("\n".join(lines), flush=True)
    print(f"(bench took {time.monotonic() - started:.0f}s)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
