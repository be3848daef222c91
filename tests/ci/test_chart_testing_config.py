"""chart-testing (ct) and kind configuration: they point at this chart and agree with the repo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ci.buildfiles import REPO_ROOT

CHART = REPO_ROOT / "charts" / "gvirtus-kai"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def ct_config() -> dict[str, Any]:
    return load(REPO_ROOT / "ci" / "ct.yaml")


def test_ct_finds_the_chart_in_its_chart_dirs() -> None:
    chart_dirs = [REPO_ROOT / d for d in ct_config()["chart-dirs"]]

    assert CHART.parent in chart_dirs
    assert load(CHART / "Chart.yaml")["name"] == CHART.name


def test_ct_lints_with_a_config_that_exists() -> None:
    assert (REPO_ROOT / ct_config()["lint-conf"]).is_file()


def test_ct_lint_rules_match_the_repository_yamllint_rules() -> None:
    lintconf = load(REPO_ROOT / "ci" / "lintconf.yaml")
    repository = load(REPO_ROOT / "ci" / "yamllint.yaml")

    assert lintconf["extends"] == repository["extends"]
    assert lintconf["rules"] == repository["rules"]


def chart_yaml_files() -> list[Path]:
    return [CHART / "Chart.yaml", CHART / "values.yaml", *sorted(CHART.glob("ci/*-values.yaml"))]


@pytest.mark.parametrize("path", chart_yaml_files(), ids=lambda p: str(p.relative_to(CHART)))
def test_the_files_ct_lints_pass_its_yamllint_rules(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "yamllint", "--strict", "--format", "parsable",
         "-c", str(REPO_ROOT / "ci" / "lintconf.yaml"), str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr


def kind_nodes() -> list[dict[str, Any]]:
    config = load(REPO_ROOT / "ci" / "kind-config.yaml")
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    nodes: list[dict[str, Any]] = config["nodes"]
    return nodes


def test_kind_cluster_has_one_control_plane_and_two_workers() -> None:
    assert sorted(node["role"] for node in kind_nodes()) == ["control-plane", "worker", "worker"]


def test_no_kind_node_claims_a_physical_gpu_so_the_backend_schedules_nowhere() -> None:
    gpu_key = load(CHART / "values.yaml")["roleLabels"]["gpuPresent"]["key"]

    assert [node for node in kind_nodes() if gpu_key in (node.get("labels") or {})] == []
