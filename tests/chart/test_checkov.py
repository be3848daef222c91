"""checkov finds nothing on any scenario beyond the skips ci/checkov.yaml lists with reasons."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.conftest import CHECKOV, ROOT, SCENARIOS, helm_template_args, run_helm

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


@pytest.fixture(scope="module")
def rendered_scenarios(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("rendered")
    for scenario in SCENARIOS:
        manifest = run_helm(*helm_template_args(scenario, {}, None))
        (directory / scenario.replace("-values", "")).write_text(manifest)
    return directory


def test_checkov_passes_every_scenario(rendered_scenarios: Path) -> None:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run `make tools`")
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(rendered_scenarios), "--config-file", str(CONFIG), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{c['check_id']} {c['resource']} ({Path(c['file_path']).name})"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    passed = sum(r["summary"]["passed"] for r in reports)
    assert not failed
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert passed > 100 * len(SCENARIOS) / 2  # it really scanned every scenario's objects
