"""What every benchmark prints: one row per figure, judged PASS or MISS against its target or
shown as info, and the exit status ``make bench`` reads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

NAME_WIDTH = 58


def row(
    name: str,
    value: float,
    unit: str,
    target: float | None = None,
    *,
    at_least: bool = False,
    digits: int = 3,
) -> str:
    """``value`` next to ``target`` (at most it, or at least it); without a target, info."""
    shown = f"{value:>10.{digits}f} {unit}"
    if target is None:
        return f"  info  {name:<{NAME_WIDTH}} {shown}".rstrip()
    met = value >= target if at_least else value <= target
    bound = ">=" if at_least else "<="
    verdict = "PASS" if met else "MISS"
    return (
        f"  {verdict}  {name:<{NAME_WIDTH}} {shown:<17} target {bound} {target:g} {unit}".rstrip()
    )


def info(name: str, text: str) -> str:
    """A figure that is not a single number (several runs, a pair of values)."""
    return f"  info  {name:<{NAME_WIDTH}} {text}"


def exit_status(rows: Iterable[str]) -> int:
    """1 when any row missed its target (``make bench`` fails), else 0."""
    return 1 if any(line.lstrip().startswith("MISS") for line in rows) else 0


def percentile(samples: list[float], fraction: float) -> float:
    """The sample at ``fraction`` of the sorted samples (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def resident_parts(pid: int) -> str:
    """RssAnon (private: Python objects, heaps, stacks) / RssFile (mapped code of the interpreter
    and the native extensions, shared with the page cache)."""
    parts = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            parts[key] = int(value.split()[0]) / 1024
    return f"{parts['RssAnon']:.1f} / {parts['RssFile']:.1f} MiB"
