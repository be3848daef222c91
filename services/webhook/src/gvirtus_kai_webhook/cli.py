"""``gvirtus-kai inject``: apply the webhook's pod mutation to manifests offline.

Reads multi-document YAML, mutates every Pod and workload pod template that carries the
``gvirtus.io/enabled: "true"`` label (on the pod template, exactly what the webhook would see) and
writes the result to stdout. Each pod is pinned to one backend (``--backend-address``, or one
ready backend pod's IPv4 address from DNS, chosen at random per pod), or with
``--placement controller`` gated for the placement controller as the webhook does by default.
Documents it does not change come out byte for byte as they went in
(quotes, comments, flow style, ``---`` lines and empty documents kept). Nothing is written unless
every document succeeded.

Exit codes: 0 success, 1 an input, DNS or mutation error, 2 bad command-line usage or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TextIO

import jsonpatch
import yaml
from gvirtus_kai_common.logs import setup_logging
from gvirtus_kai_common.settings import load_settings, settings_usage

from gvirtus_kai_webhook.dns import BackendResolutionError, BackendResolver, choose_backend
from gvirtus_kai_webhook.models import JsonPatch
from gvirtus_kai_webhook.mutation import (
    MutationDenied,
    is_enabled,
    mutate_pod,
    needs_backend_address,
    pinned_address,
)
from gvirtus_kai_webhook.settings import PLACEMENTS, STRATEGIES, Settings
from gvirtus_kai_webhook.workloads import PodSite, pod_sites

PROGRAM = "gvirtus-kai"
EXIT_OK = 0
EXIT_FAILED = 1


# libyaml's parser and emitter when PyYAML was built with them: several times faster.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _ManifestDumper(_SafeDumper):  # type: ignore[valid-type,misc]
    """Readable manifests: multi-line strings as literal blocks, no anchors or aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def _ipv4_address(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IPv4 address (GVirtuS needs a dotted-quad IPv4 server_address: "
            "no host names, no IPv6)"
        ) from None


def _package_version() -> str:
    try:
        return version("gvirtus-kai-webhook")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="GVirtuS-KAI tools. Settings come from GVIRTUS_KAI_* environment variables.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inject = commands.add_parser(
        "inject",
        help="add the GVirtuS frontend config to GVirtuS-enabled pods in manifests",
        description=(
            "Mutate every Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, "
            "ReplicationController, Job, CronJob and PodTemplate whose pod template is labelled "
            "gvirtus.io/enabled=true, as the admission webhook would; other documents pass "
            "through. Mutated YAML goes to stdout, errors and warnings to stderr."
        ),
        epilog=settings_usage(Settings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inject.add_argument(
        "-f", "--filename", required=True, metavar="FILE", help="manifest file, or - for stdin"
    )
    inject.add_argument(
        "--backend-address",
        type=_ipv4_address,
        metavar="IPV4",
        help="the backend pod's IPv4 address to pin pods to (with port GVIRTUS_KAI_BACKEND_PORT); "
        "default: one ready backend pod per pod, chosen at random among the A records of "
        "GVIRTUS_KAI_BACKEND_HOST (the backend's headless Service)",
    )
    inject.add_argument(
        "--strategy", choices=STRATEGIES, help="default delivery strategy (GVIRTUS_KAI_STRATEGY)"
    )
    inject.add_argument(
        "--placement",
        choices=PLACEMENTS,
        help="dns: pin every pod to one backend address (--backend-address or DNS); controller: "
        "give every pod the scheduling gate gvirtus.io/backend and no address, as the webhook "
        "does, for a cluster whose placement controller assigns backends. Default: "
        "GVIRTUS_KAI_PLACEMENT when it is set, else dns: an offline manifest is pinned unless "
        "asked otherwise",
    )
    return parser


@dataclass
class _Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    changed: set[int] = field(default_factory=set)  # indices of the documents patched


def _label(index: int, site: PodSite) -> str:
    return f"document {index + 1} ({site.location})"


def _unquoted_enable_label(pod: dict[str, Any], label: str) -> bool:
    metadata = pod.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    return isinstance(labels, dict) and labels.get(label) is True


def _read(filename: str, stdin: TextIO) -> str:
    return stdin.read() if filename == "-" else Path(filename).read_text(encoding="utf-8")


def inject(documents: list[Any], settings: Settings, backend_address: str | None) -> _Report:
    """Mutate the enabled pods in ``documents`` in place; resolve the backend only if a pod is
    pinned and no ``backend_address`` is given."""
    report = _Report()
    sites = []
    for index, document in enumerate(documents):
        for site in pod_sites(document):
            if is_enabled(site.pod, settings):
                sites.append((index, site))
            elif _unquoted_enable_label(site.pod, settings.enable_label):
                label = settings.enable_label
                report.errors.append(
                    f"{_label(index, site)}: label {label} is the YAML boolean true; "
                    f'label values are strings, so quote it: {label}: "true"'
                )
    if report.errors:
        return report
    if not sites:
        return report
    addresses: tuple[str, ...] = ()
    if backend_address is None and any(needs_backend_address(s.pod, settings) for _, s in sites):
        try:
            addresses = asyncio.run(BackendResolver(settings).resolve())
        except BackendResolutionError as exc:
            report.errors.append(
                f"{exc}; outside the cluster, give the backend pod's IPv4 address with "
                "--backend-address"
            )
            return report
    for index, site in sites:
        address = backend_address
        if addresses:
            address = choose_backend(addresses, pinned_address(site.pod, settings))
        try:
            mutation = mutate_pod(site.pod, settings, address)
        except MutationDenied as exc:
            report.errors.append(f"{_label(index, site)}: {exc}")
            continue
        # In place: the pod may be a workload's template inside the document.
        jsonpatch.apply_patch(site.pod, JsonPatch.dump_python(mutation.patch), in_place=True)
        if mutation.patch:
            report.changed.add(index)
        report.warnings.extend(f"{_label(index, site)}: {w}" for w in mutation.warnings)
    return report


# A document marker: "---" or "..." at the start of a line, alone or followed by a space.
_MARKER = re.compile(r"^(?:---|\.\.\.)(?=[ \t\r\n]|$)", re.MULTILINE)


@dataclass
class _Source:
    """One document as written: its ``---`` line (if any), its text, and what it holds."""

    marker: str
    text: str
    document: Any


def split_documents(text: str) -> list[_Source]:
    """The documents of a YAML stream with the text each came from (empty ones included).

    Raises ``yaml.YAMLError`` for the stream as a whole, so the position it names is right.
    """
    list(yaml.load_all(text, Loader=_SafeLoader))
    starts = [match.start() for match in _MARKER.finditer(text) if text[match.start()] == "-"]
    bounds = [0, *starts] if not starts or starts[0] != 0 else starts
    sources = []
    for begin, end in zip(bounds, [*bounds[1:], len(text)], strict=True):
        chunk = text[begin:end]
        marker = ""
        if chunk.startswith("---"):
            newline = chunk.find("\n")
            marker = chunk if newline < 0 else chunk[: newline + 1]
        body = chunk[len(marker) :]
        document = yaml.load(marker[3:] + body, Loader=_SafeLoader)  # noqa: S506 - safe loader
        sources.append(_Source(marker, body, document))
    return sources


def dump(document: Any) -> str:
    return yaml.dump(
        document,
        Dumper=_ManifestDumper,
        sort_keys=False,  # keep the author's key order
        width=1 << 20,  # never fold long values such as the properties JSON
        allow_unicode=True,
    )


def render(sources: Sequence[_Source], changed: set[int]) -> str:
    """The stream again: changed documents re-serialized, every other byte as it was."""
    parts = []
    index = 0  # counts documents that hold something, as the messages do
    for source in sources:
        if source.document is None:
            parts.append(source.marker + source.text)
            continue
        if index in changed:
            parts.append(("---\n" if source.marker else "") + dump(source.document))
        else:
            parts.append(source.marker + source.text)
        index += 1
    return "".join(parts)


def run_inject(
    args: argparse.Namespace, settings: Settings, stdin: TextIO, stdout: TextIO, stderr: TextIO
) -> int:
    placement = args.placement or (
        settings.placement if "placement" in settings.model_fields_set else "dns"
    )
    settings = settings.model_copy(
        update={"strategy": args.strategy or settings.strategy, "placement": placement}
    )
    # The library logs JSON; by default only errors, so stderr stays readable for people.
    setup_logging(settings.log_level if "log_level" in settings.model_fields_set else "error")

    try:
        text = _read(args.filename, stdin)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.filename}: {exc}", file=stderr)
        return EXIT_FAILED
    try:
        sources = split_documents(text)
    except yaml.YAMLError as exc:
        print(f"error: {args.filename} is not valid YAML: {exc}", file=stderr)
        return EXIT_FAILED

    documents = [source.document for source in sources if source.document is not None]
    report = inject(documents, settings, args.backend_address)
    for warning in report.warnings:
        print(f"warning: {warning}", file=stderr)
    if report.errors:
        for error in report.errors:
            print(f"error: {error}", file=stderr)
        return EXIT_FAILED
    stdout.write(render(sources, report.changed))
    stdout.flush()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = argparse.Namespace()
    settings = load_settings(Settings, PROGRAM, argv, parser=build_parser(), flags=args)
    try:
        return run_inject(args, settings, sys.stdin, sys.stdout, sys.stderr)
    except BrokenPipeError:
        # The reader went away (`... | head`): not worth a traceback. Point stdout at devnull so
        # the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        print("error: stdout was closed before the output was written", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
