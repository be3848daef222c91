"""checkov finds nothing on any scenario beyond the skips ci/checkov.yaml lists with reasons."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHECKOV,
    NAMESPACE,
    RELEASE,
    ROOT,
    SCENARIOS,
    helm_template_args,
    render,
    run_helm,
)

CONFIG = ROOT / "ci" / "checkov.yaml"


def _skips_with_reasons() -> dict[str, str]:
    """Each skipped check id with the comment above it; consecutive ids share one comment."""
    reasons: dict[str, str] = {}
    comment: list[str] = []
    group_reason = ""
    for line in CONFIG.read_text().splitlines():
        text = line.strip()
        if text.startswith("#"):
            comment.append(text.lstrip("#").strip())
        elif match := re.fullmatch(r"- (CKV2?_K8S_\d+)", text):
            group_reason = " ".join(comment) or group_reason
            reasons[match[1]] = group_reason
            comment = []
        else:
            comment, group_reason = [], ""
    return reasons


def test_every_skipped_check_has_a_reason() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    skipped = config["skip-check"]
    reasons = _skips_with_reasons()
    assert set(reasons) == set(skipped)
    assert all(len(reason) > 40 for reason in reasons.values()), reasons


def test_checkov_runs_offline() -> None:
    assert yaml.safe_load(CONFIG.read_text())["skip-download"] is True


def _run_checkov(directory: Path, config: Path = CONFIG) -> tuple[list[dict[str, Any]], int]:
    """checkov's JSON reports for every manifest in ``directory``, and its exit code."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run `make tools`")
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(directory), "--config-file", str(config), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(proc.stdout)
    return (report if isinstance(report, list) else [report]), proc.returncode


def _results(reports: list[dict[str, Any]], kind: str) -> set[tuple[str, str]]:
    """(check id, resource) of every ``failed`` or ``skipped`` result."""
    return {(c["check_id"], c["resource"]) for r in reports for c in r["results"][f"{kind}_checks"]}


@pytest.fixture(scope="module")
def rendered_scenarios(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rendered")
    for scenario in SCENARIOS:
        manifest = run_helm(*helm_template_args(scenario, {}, None))
        (directory / scenario.replace("-values", "")).write_text(manifest)
    return directory


@pytest.fixture(scope="module")
def verbose_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ci/checkov.yaml with passed and skipped results listed in the report."""
    config = yaml.safe_load(CONFIG.read_text())
    config["quiet"] = False
    path = tmp_path_factory.mktemp("checkov") / "checkov.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_checkov_passes_every_scenario(rendered_scenarios: Path) -> None:
    reports, returncode = _run_checkov(rendered_scenarios)
    failed = _results(reports, "failed")
    passed = sum(r["summary"]["passed"] for r in reports)
    assert not failed
    assert returncode == 0
    assert passed > 100 * len(SCENARIOS) / 2  # it really scanned every scenario's objects


def test_checkov_honours_the_skips_annotated_on_single_objects(
    tmp_path: Path, verbose_config: Path
) -> None:
    (tmp_path / "default.yaml").write_text(run_helm(*helm_template_args(None, {}, None)))
    reports, _ = _run_checkov(tmp_path, verbose_config)
    assert _results(reports, "skipped") == {
        ("CKV_K8S_23", f"DaemonSet.{NAMESPACE}.{RELEASE}-device-plugin"),
        ("CKV_K8S_40", f"DaemonSet.{NAMESPACE}.{RELEASE}-device-plugin"),
        ("CKV_K8S_38", f"DaemonSet.{NAMESPACE}.{RELEASE}-labeler"),
        ("CKV_K8S_38", f"Deployment.{NAMESPACE}.{RELEASE}-controller"),
        ("CKV_K8S_8", f"Pod.{NAMESPACE}.{RELEASE}-helm-test"),
        ("CKV_K8S_9", f"Pod.{NAMESPACE}.{RELEASE}-helm-test"),
        ("CKV2_K8S_6", f"Pod.{NAMESPACE}.{RELEASE}-helm-test"),
    }


def _as_root_without_probes_and_with_a_token(workload: dict[str, Any]) -> None:
    """Give a workload every trait the chart excuses on other objects only."""
    pod = workload["spec"]["template"]["spec"]
    pod["securityContext"].update(runAsUser=0, runAsNonRoot=False)
    pod["automountServiceAccountToken"] = True
    for container in pod["containers"]:
        container.pop("livenessProbe", None)
        container.pop("readinessProbe", None)


def test_checkov_still_fails_the_excused_findings_on_any_other_object(tmp_path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(run_helm(*helm_template_args(None, {}, None))) if d]
    webhook = next(
        d
        for d in documents
        if d["kind"] == "Deployment"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == "webhook"
    )
    _as_root_without_probes_and_with_a_token(webhook)
    # A second test pod without the annotations: no probes and no NetworkPolicy selecting it.
    test_pod = copy.deepcopy(next(d for d in documents if d["kind"] == "Pod"))
    test_pod["metadata"]["name"] = "unexcused"
    test_pod["metadata"]["annotations"] = {"helm.sh/hook": "test"}
    documents.append(test_pod)
    (tmp_path / "regressed.yaml").write_text(yaml.safe_dump_all(documents))
    reports, returncode = _run_checkov(tmp_path)
    resource = f"Deployment.{NAMESPACE}.{RELEASE}-webhook"
    assert _results(reports, "failed") == {
        (check, resource)
        for check in ("CKV_K8S_23", "CKV_K8S_40", "CKV_K8S_38", "CKV_K8S_8", "CKV_K8S_9")
    } | {
        (check, f"Pod.{NAMESPACE}.unexcused") for check in ("CKV_K8S_8", "CKV_K8S_9", "CKV2_K8S_6")
    }
    assert returncode == 1


def test_every_annotated_skip_names_one_check_and_its_reason() -> None:
    annotated = [
        (document["kind"], key, value)
        for scenario in SCENARIOS
        for document in render(scenario)
        for key, value in (document["metadata"].get("annotations") or {}).items()
        if key.startswith("checkov.io/skip")
    ]
    assert annotated
    for kind, key, value in annotated:
        # checkov splits the value at "=": a second "=" in the reason would break the skip.
        check, _, reason = value.partition("=")
        assert re.fullmatch(r"checkov\.io/skip\d+", key), (kind, key)
        assert re.fullmatch(r"CKV2?_K8S_\d+", check), (kind, value)
        assert "=" not in reason, (kind, value)
        assert len(reason) > 40, (kind, value)
