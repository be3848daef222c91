"""Every manifest of every scenario is valid for every supported Kubernetes minor; lint is clean."""

from __future__ import annotations

import pytest
import yaml

from tests.chart import k8s_schemas
from tests.chart.conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    HelmError,
    Manifest,
    render,
    run_helm,
)

MINORS = k8s_schemas.supported_minors()
# Custom resources kubernetes-validate has no schema for: named here, checked structurally below.
CERT_MANAGER_KINDS = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}


def _kubernetes_objects(scenario: str) -> list[Manifest]:
    return [m for m in render(scenario) if (m["apiVersion"], m["kind"]) not in CERT_MANAGER_KINDS]


def test_validation_covers_kubernetes_1_30_up_to_the_newest_known_minor() -> None:
    assert MINORS[0] == "1.30"
    assert len(MINORS) >= 8, MINORS


def test_validation_starts_at_the_oldest_kubernetes_the_chart_accepts() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={MINORS[0]}.0-0"


@pytest.mark.parametrize("minor", MINORS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_validates_strictly(scenario: str, minor: str) -> None:
    problems = {
        f"{m['kind']}/{m['metadata']['name']}": errs
        for m in _kubernetes_objects(scenario)
        if (errs := k8s_schemas.errors(m, minor))
    }
    assert not problems


def test_the_only_objects_without_a_kubernetes_schema_are_cert_manager_resources() -> None:
    unknown = set()
    for scenario in SCENARIOS:
        for m in render(scenario):
            try:
                k8s_schemas.validator(MINORS[-1], m["apiVersion"], m["kind"])
            except k8s_schemas.NoSchemaError:
                unknown.add((m["apiVersion"], m["kind"]))
    assert unknown == CERT_MANAGER_KINDS


def test_every_namespaced_object_names_the_release_namespace() -> None:
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "PriorityClass",
    }
    for scenario in SCENARIOS:
        for m in render(scenario):
            expected = None if m["kind"] in cluster_scoped else NAMESPACE
            assert m["metadata"].get("namespace") == expected, (scenario, m["kind"])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict_is_clean(scenario: str) -> None:
    out = run_helm(
        "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", str(CHART / "ci" / scenario)
    )
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out
    assert "[ERROR]" not in out


def test_client_dry_run_install_of_the_defaults_succeeds() -> None:
    out = run_helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert "STATUS: pending-install" in out
    assert "kind: MutatingWebhookConfiguration" in out


def test_clusters_older_than_1_30_are_refused() -> None:
    # Scheduling gates are GA and the preStop sleep action is on by default from 1.30.
    with pytest.raises(HelmError, match="kubeVersion"):
        render(kube_version="1.29.9")
    assert render(kube_version="1.30.0").of_kind("Deployment")
