"""Pod mutation and ``gvirtus-kai inject`` figures next to their targets (``make bench``).

The mutation runs inside every admission review. The webhook target of 7000 reviews/s on one
core leaves about 143 us per review for TLS, HTTP, JSON and the mutation together; the mutation
gets at most a third of that. Figures are the best of several rounds (the least disturbed by other
processes on the machine), per call.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonpatch
from gvirtus_kai_webhook.cli import inject, render, split_documents
from gvirtus_kai_webhook.models import JsonPatch
from gvirtus_kai_webhook.mutation import mutate_pod
from gvirtus_kai_webhook.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import exit_status, info, row  # noqa: E402

REVIEWS = ROOT / "tests" / "webhook" / "fixtures" / "reviews"
WORKLOADS = ROOT / "tests" / "webhook" / "fixtures" / "manifests" / "workloads.yaml"
CLI = str(Path(sys.executable).with_name("gvirtus-kai"))
BACKEND_IP = "10.96.0.42"

# The review must stay well inside the webhook's 1 ms one-connection p50 (bench/webhook.py).
TARGET_MUTATION_US = 100.0
TARGET_INJECT_DOCS_PER_S = 1000.0
TARGET_CLI_START_S = 1.0


def per_call_us(call: Callable[[], object], rounds: int) -> float:
    number = 2000
    return min(timeit.repeat(call, number=number, repeat=rounds)) / number * 1e6


def pod(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads((REVIEWS / name).read_text())["request"]["object"]
    return obj


def mutation_rows(rounds: int) -> list[str]:
    settings = Settings(placement="dns")
    gpu = pod("pod-gpu-v1.json")
    already = copy.deepcopy(gpu)
    patch = JsonPatch.dump_python(mutate_pod(gpu, settings, BACKEND_IP).patch)
    jsonpatch.apply_patch(already, patch, in_place=True)
    gated = Settings(placement="controller")
    rows = [
        row(
            "mutate_pod, GPU pod review (mount, gated)",
            per_call_us(lambda: mutate_pod(gpu, gated, None), rounds),
            "us",
            TARGET_MUTATION_US,
        )
    ]
    cases = {
        "mutate_pod, GPU pod review (mount, pinned)": gpu,
        "mutate_pod, 3-container StatefulSet pod": pod("pod-multi-container-v1.json"),
        "mutate_pod, Job pod (sed)": pod("pod-sed-job-v1.json"),
        "mutate_pod, already mutated (empty patch)": already,
    }
    for name, obj in cases.items():

        def call(obj: dict[str, Any] = obj) -> object:
            return mutate_pod(obj, settings, BACKEND_IP)

        rows.append(row(name, per_call_us(call, rounds), "us", TARGET_MUTATION_US))
    return rows


def inject_rows(copies: int) -> list[str]:
    text = (WORKLOADS.read_text() + "\n---\n") * copies
    started = time.perf_counter()
    sources = split_documents(text)
    documents = [source.document for source in sources if source.document is not None]
    parsed = time.perf_counter()
    report = inject(documents, Settings(placement="dns"), BACKEND_IP)
    output = render(sources, report.changed)
    elapsed = time.perf_counter() - started
    if report.errors or not output:
        raise SystemExit(f"inject failed: {report.errors}")
    load_share = (parsed - started) / elapsed
    starts = []
    for _ in range(5):
        began = time.perf_counter()
        subprocess.run([CLI, "--version"], check=True, capture_output=True)
        starts.append(time.perf_counter() - began)
    return [
        row(f"inject: parse, mutate, dump {len(documents)} documents", len(documents) / elapsed,
            "docs/s", TARGET_INJECT_DOCS_PER_S, at_least=True),
        info("inject: share of time spent parsing YAML", f"{load_share:.0%}"),
        row("gvirtus-kai process start (--version)", min(starts), "s", TARGET_CLI_START_S),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds per figure")
    parser.add_argument("--copies", type=int, default=100, help="copies of the workloads manifest")
    args = parser.parse_args()
    print("pod mutation and injector", flush=True)
    rows = mutation_rows(args.rounds) + inject_rows(args.copies)
    print("\n".join(rows), flush=True)
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
