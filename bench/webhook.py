"""Webhook throughput and latency over TLS, next to the targets (``make bench``).

The webhook runs alone on CPU 0 (``taskset -c 0``); wrk, this script and the DNS server run on
the other CPU. wrk keeps connections alive and POSTs a realistic GPU pod AdmissionReview.

The figures judged against the targets are those at LOG_LEVEL=info, as deployed: one JSON log
line per admission. A LOG_LEVEL=warning run follows for information only. The 16-connection run
is repeated (``--runs``) and its median taken, since other work on a shared machine moves single
runs by several per cent.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tlsfiles import SecretVolume, client_context, serving_cert  # noqa: E402
from tests.webhookproc import (  # noqa: E402
    BACKEND_HOST,
    WebhookProcess,
    api_server_client,
    start_webhook,
)

WORK = ROOT / ".bench" / "webhook"
REVIEW = ROOT / "tests" / "webhook" / "fixtures" / "reviews" / "pod-gpu-v1.json"
WEBHOOK_CPU, LOAD_CPU = 0, 1

TARGET_RPS_16 = 7000.0
TARGET_P99_16_MS = 5.0
TARGET_P50_1_MS = 0.5
TARGET_RSS_MIB = 60.0
TARGET_READY_S = 1.5

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}

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


def verdict(name: str, value: float, target: float, unit: str, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    margin = (value / target - 1) * 100 if higher_is_better else (1 - value / target) * 100
    status = "PASS" if ok else "MISS"
    relation = ">=" if higher_is_better else "<="
    return (
        f"  {status}  {name:<34} {value:>10.3f} {unit:<5} target {relation} {target:g} {unit}"
        f"  ({margin:+.0f}% margin)"
    )


def start_dns_server() -> tuple[subprocess.Popen[str], str]:
    """The loopback DNS server in its own process, on the load CPU."""
    process = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(LOAD_CPU),
            sys.executable,
            str(ROOT / "tests" / "dnsserver.py"),
            f"{BACKEND_HOST}=10.96.0.42",
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


def info(name: str, value: str) -> str:
    return f"  info  {name:<34} {value}"


def median_run(results: list[WrkResult]) -> WrkResult:
    """The run with the median throughput (its latencies belong to that same run)."""
    ranked = sorted(results, key=lambda result: result.requests_per_second)
    return ranked[(len(ranked) - 1) // 2]


def bench(log_level: str, seconds: int, runs: int, judged: bool) -> list[str]:
    """Measure the webhook at ``log_level``; ``judged`` prints PASS/MISS against the targets."""
    ca = trustme.CA()
    volume = SecretVolume(WORK / f"tls-{log_level}")
    volume.write(serving_cert(ca))
    script = _wrk_script(REVIEW)
    dns_process, nameserver = start_dns_server()
    log_file = (WORK / f"webhook-{log_level}.log").open("wb")
    webhook: WebhookProcess | None = None
    role = "judged against the targets" if judged else "for information, not judged"
    lines = [
        f"webhook (runtime dependencies only, as in the image), LOG_LEVEL={log_level} "
        f"(log lines to a file), {seconds}s per run, {role}:"
    ]
    try:
        webhook = start_webhook(
            {
                "TLS_CERT_FILE": str(volume.cert_file),
                "TLS_KEY_FILE": str(volume.key_file),
                "DNS_NAMESERVERS": nameserver,
                "LOG_LEVEL": log_level,
            },
            stderr=log_file,
            prefix=["taskset", "-c", str(WEBHOOK_CPU)],
            command=runtime_webhook(),
        )
        ready_seconds = webhook.wait_ready(client_context(ca))
        with api_server_client(client_context(ca)) as client:
            answer = webhook.post(client, "/mutate", REVIEW.read_bytes()).json()
        if answer["response"].get("patchType") != "JSONPatch":
            raise RuntimeError(f"the review was not mutated: {answer}")
        url = webhook.url("/mutate")
        run_wrk(url, script, 16, 2)  # warm-up
        one = run_wrk(url, script, 1, seconds)
        runs_16: list[WrkResult] = []
        cpu_shares: list[float] = []
        for _ in range(runs):
            cpu_before = _cpu_seconds(webhook.process.pid)
            runs_16.append(run_wrk(url, script, 16, seconds))
            cpu_shares.append((_cpu_seconds(webhook.process.pid) - cpu_before) / seconds)
        sixteen = median_run(runs_16)
        cpu_share = statistics.median(cpu_shares)
        rss_mib = psutil.Process(webhook.process.pid).memory_info().rss / 2**20
        errors = one.errors + sum(result.errors for result in runs_16)
        figures = [
            ("ready after start", ready_seconds, TARGET_READY_S, "s", False),
            ("req/s, 16 connections", sixteen.requests_per_second, TARGET_RPS_16, "", True),
            ("p99 latency, 16 connections", sixteen.p99_ms, TARGET_P99_16_MS, "ms", False),
            ("p50 latency, 1 connection", one.p50_ms, TARGET_P50_1_MS, "ms", False),
            ("RSS after the runs", rss_mib, TARGET_RSS_MIB, "MiB", False),
        ]
        for name, value, target, unit, higher_is_better in figures:
            if judged:
                lines.append(verdict(name, value, target, unit, higher_is_better))
            else:
                lines.append(info(name, f"{value:>10.3f} {unit}"))
        all_rps = ", ".join(f"{result.requests_per_second:.0f}" for result in runs_16)
        lines += [
            info("req/s of each 16-connection run", f"{all_rps} (median above)"),
            info("req/s, 1 connection", f"{one.requests_per_second:>10.0f}"),
            info("p50 latency, 16 connections", f"{sixteen.p50_ms:>10.3f} ms"),
            info("p99 latency, 1 connection", f"{one.p99_ms:>10.3f} ms"),
            info("failed requests", f"{errors:>10d}"),
            # Other work on CPU 0 steals time from the webhook; this shows how much it got.
            info(
                "webhook CPU share, 16 connections",
                f"{cpu_share * 100:>10.0f} %  (= "
                f"{sixteen.requests_per_second / max(cpu_share, 0.01):.0f} req per CPU-second)",
            ),
        ]
        if errors:
            lines.append(f"  {'MISS' if judged else 'info'}  some requests failed (see above)")
    finally:
        if webhook is not None:
            webhook.stop()
        dns_process.terminate()
        dns_process.wait()
        log_file.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument(
        "--runs", type=int, default=3, help="16-connection runs per level; the median is reported"
    )
    parser.add_argument(
        "--log-level",
        action="append",
        choices=["info", "warning"],
        help="webhook LOG_LEVEL to measure (repeatable; default: info and warning); "
        "only info is judged against the targets",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("the benchmark needs two CPUs: one for the webhook, one for the load")
    os.sched_setaffinity(0, {LOAD_CPU})
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    for level in args.log_level or ["info", "warning"]:
        lines = bench(level, args.seconds, max(args.runs, 1), judged=level == "info")
        print("\n".join(lines), flush=True)
    print(f"(bench took {time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
