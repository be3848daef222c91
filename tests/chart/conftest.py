"""Render the gvirtus-kai chart with the real helm binary, once per distinct set of inputs."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "gvirtus-kai"
HELM = ROOT / ".tools" / "bin" / "helm"
CHECKOV = ROOT / ".tools" / "bin" / "checkov"
NAMESPACE = "gvirtus-system"
RELEASE = "gvirtus-kai"
# Every chart-testing scenario; tests parametrised over them pick up new files automatically.
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))

Manifest = dict[str, Any]


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


def run_helm(*args: str, env: Mapping[str, str] | None = None) -> str:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run `make tools`")
    proc = subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    if proc.returncode != 0:
        raise HelmError(proc.stderr.strip())
    return proc.stdout


def _set_args(values: Mapping[str, Any]) -> list[str]:
    """``{"webhook.replicaCount": 3}`` -> ``--set-json webhook.replicaCount=3`` (types survive)."""
    args: list[str] = []
    for path, value in values.items():
        args += ["--set-json", f"{path}={json.dumps(value)}"]
    return args


def helm_template_args(
    scenario: str | None, values: Mapping[str, Any], kube_version: str | None
) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if scenario:
        args += ["--values", str(CHART / "ci" / scenario)]
    if kube_version:
        args += ["--kube-version", kube_version]
    return args + _set_args(values)


@functools.cache
def _render_text(
    scenario: str | None, values_json: str, kube_version: str | None, with_tests: bool
) -> str:
    args = helm_template_args(scenario, json.loads(values_json), kube_version)
    if not with_tests:
        args.append("--skip-tests")
    return run_helm(*args)


class Manifests(list[Manifest]):
    """The objects of one render, with lookups by kind and component label."""

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self if m["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> Manifest:
        found = [
            m
            for m in self.of_kind(kind)
            if component is None or labels_of(m).get("app.kubernetes.io/component") == component
        ]
        assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
        return found[0]

    def named(self, kind: str, name: str) -> Manifest:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def of_component(self, component: str) -> list[Manifest]:
        return [m for m in self if labels_of(m).get("app.kubernetes.io/component") == component]

    def components(self) -> set[str]:
        return {labels_of(m).get("app.kubernetes.io/component", "") for m in self}


def render(
    scenario: str | None = None,
    values: Mapping[str, Any] | None = None,
    *,
    kube_version: str | None = None,
    with_tests: bool = True,
) -> Manifests:
    """Objects rendered by ``helm template`` in namespace gvirtus-system (a fresh copy per call)."""
    text = _render_text(
        scenario, json.dumps(values or {}, sort_keys=True), kube_version, with_tests
    )
    docs = [d for d in yaml.safe_load_all(text) if d]
    return Manifests(copy.deepcopy(docs))


@functools.cache
def _notes_text(scenario: str | None, values_json: str) -> str:
    args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    if scenario:
        args += ["--values", str(CHART / "ci" / scenario)]
    # A client-side dry run never contacts a cluster; no kube config makes sure of it.
    env = {**os.environ, "KUBECONFIG": os.devnull}
    output = run_helm(*args, *_set_args(json.loads(values_json)), env=env)
    _, marker, notes = output.partition("\nNOTES:\n")
    assert marker, "helm printed no NOTES"
    return notes


def render_notes(values: Mapping[str, Any] | None = None, scenario: str | None = None) -> str:
    """The chart's NOTES.txt as `helm install` prints it."""
    return _notes_text(scenario, json.dumps(values or {}, sort_keys=True))


def labels_of(manifest: Manifest) -> dict[str, str]:
    labels: dict[str, str] = manifest.get("metadata", {}).get("labels") or {}
    return labels


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = (
        workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
    )
    return spec


def container(workload: Manifest, name: str | None = None) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(workload)["containers"]
    if name is None:
        assert len(containers) == 1
        return containers[0]
    return next(c for c in containers if c["name"] == name)


def env_of(workload: Manifest) -> dict[str, Any]:
    """Container env as name -> value (or the valueFrom mapping)."""
    env = container(workload).get("env", [])
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


def pod_workloads(manifests: Manifests) -> Iterator[Manifest]:
    for m in manifests:
        if m["kind"] in {"Deployment", "DaemonSet", "StatefulSet", "Job", "Pod"}:
            yield m


def load_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


@pytest.fixture(scope="session")
def default_manifests() -> Manifests:
    return render()
