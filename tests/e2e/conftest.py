"""Fixtures of the e2e suite: the tools, a probe node, one chart release and an apps namespace.

None of these run when the suite is skipped (no KUBECONFIG): skip marks are evaluated before
fixtures are set up.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import Cli, E2EConfig, image_value_overrides
from tests.e2e.objects import nodes_by_name, pick_probe_node


@dataclass(frozen=True)
class RoleLabels:
    frontend_key: str
    frontend_default: str
    backend_key: str
    backend_default: str
    gpu_present_key: str


@dataclass(frozen=True)
class ProbeNode:
    """A GPU-less worker the suite prepares before installing the chart.

    Its frontend label is removed (the labeler must add it back) and its backend label is set to
    `operator_backend_value` (the labeler must keep it).
    """

    name: str
    operator_backend_value: str


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    values: dict[str, Any]  # every computed value (`helm get values --all`)

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.name}"


@pytest.fixture(scope="session")
def e2e_config() -> E2EConfig:
    return E2EConfig.from_environ(os.environ)


@pytest.fixture(scope="session")
def kubectl(e2e_config: E2EConfig) -> Cli:
    return Cli(e2e_config.kubectl)


@pytest.fixture(scope="session")
def helm(e2e_config: E2EConfig) -> Cli:
    return Cli(e2e_config.helm, timeout_seconds=e2e_config.timeout_seconds + 60)


@pytest.fixture(scope="session")
def role_labels(helm: Cli, e2e_config: E2EConfig) -> RoleLabels:
    """Label keys and defaults as the chart under test defines them."""
    values = yaml.safe_load(helm.run("show", "values", str(e2e_config.chart)))
    roles = values["roleLabels"]
    return RoleLabels(
        frontend_key=roles["frontend"]["key"],
        frontend_default=str(roles["frontend"]["default"]),
        backend_key=roles["backend"]["key"],
        backend_default=str(roles["backend"]["default"]),
        gpu_present_key=roles["gpuPresent"]["key"],
    )


@pytest.fixture(scope="session")
def probe_node(kubectl: Cli, role_labels: RoleLabels) -> Iterator[ProbeNode]:
    """Picks and prepares the probe node; restores its two role labels afterwards.

    Torn down after the release (which depends on it), so the labeler is gone by then.
    """
    nodes = kubectl.json("get", "nodes")["items"]
    name = pick_probe_node(nodes, role_labels.gpu_present_key)
    original = nodes_by_name(nodes)[name]["metadata"].get("labels", {})
    operator_value = "false" if role_labels.backend_default == "true" else "true"
    if role_labels.frontend_key in original:
        kubectl.run("label", "node", name, f"{role_labels.frontend_key}-")
    kubectl.run("label", "node", name, f"{role_labels.backend_key}={operator_value}", "--overwrite")
    try:
        yield ProbeNode(name=name, operator_backend_value=operator_value)
    finally:
        for key in (role_labels.frontend_key, role_labels.backend_key):
            if key in original:
                kubectl.run("label", "node", name, f"{key}={original[key]}", "--overwrite")
            else:
                kubectl.run("label", "node", name, f"{key}-")


@pytest.fixture(scope="session")
def labels_before_install(kubectl: Cli, probe_node: ProbeNode) -> dict[str, dict[str, str]]:
    """Every node's labels just before the chart is installed (after the probe node is set)."""
    return {
        name: node["metadata"].get("labels", {})
        for name, node in nodes_by_name(kubectl.json("get", "nodes")["items"]).items()
    }


@pytest.fixture(scope="session")
def release(
    e2e_config: E2EConfig,
    helm: Cli,
    kubectl: Cli,
    labels_before_install: dict[str, dict[str, str]],
) -> Iterator[Release]:
    """The chart installed into a fresh namespace and waited for; uninstalled afterwards."""
    name = f"gvirtus-e2e-{secrets.token_hex(3)}"
    namespace = name
    timeout = f"{int(e2e_config.timeout_seconds)}s"
    try:
        helm.run(
            "install", name, str(e2e_config.chart),
            "--namespace", namespace, "--create-namespace",
            "--wait", "--timeout", timeout,
            *image_value_overrides(e2e_config.image_repository_prefix, e2e_config.image_tag),
            *(arg for path in e2e_config.values_files for arg in ("--values", str(path))),
        )  # fmt: skip
        values = helm.json("get", "values", name, "--namespace", namespace, "--all")
        yield Release(name=name, namespace=namespace, values=values)
    finally:
        if helm.succeeds("status", name, "--namespace", namespace):
            helm.run("uninstall", name, "--namespace", namespace, "--wait", "--timeout", timeout)
        kubectl.run("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="session")
def apps_namespace(kubectl: Cli, release: Release) -> Iterator[str]:
    """A namespace for application pods; the webhook never sees pods in its own namespace."""
    namespace = f"{release.name}-apps"
    kubectl.run("create", "namespace", namespace)
    try:
        yield namespace
    finally:
        kubectl.run("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")
