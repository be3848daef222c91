"""How the e2e suite runs `helm test`, against stand-in helm and kubectl processes.

The chart deletes its test pod once it succeeds; Helm releases without the fix for helm/helm#9098
then fail `helm test --logs` with "pods ... not found" although the test passed. The stand-in helm
behaves like such a release, so only a runner that never asks for `--logs` passes.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.chart.conftest import render
from tests.e2e.cluster import HELM_TEST_COMPONENT, Cli, CommandFailedError, run_helm_test

PASSED = "TEST SUITE:     rel-helm-test\nPhase:          Succeeded\n"


def stand_in(tmp_path: Path, name: str, body: str) -> Cli:
    """An executable that logs its arguments to `<name>.args` and then runs `body` (sh)."""
    script = tmp_path / name
    log = tmp_path / f"{name}.args"
    script.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(log))}\n{body}\n')
    script.chmod(0o755)
    return Cli(str(script), timeout_seconds=30)


def calls(tmp_path: Path, name: str) -> list[str]:
    log = tmp_path / f"{name}.args"
    return log.read_text().splitlines() if log.exists() else []


def helm_like_before_the_logs_fix(tmp_path: Path, *, test_fails: bool) -> Cli:
    # The pod is gone after a success, so asking for its logs fails the command.
    return stand_in(
        tmp_path,
        "helm",
        f"""
for arg in "$@"; do
  if [ "$arg" = --logs ]; then
    printf '{PASSED}'
    echo 'Error: unable to get pod logs for rel-helm-test: pods "rel-helm-test" not found' >&2
    exit 1
  fi
done
if {"true" if test_fails else "false"}; then
  printf 'Phase:          Failed\\n'
  echo 'Error: 1 error occurred: pod rel-helm-test failed' >&2
  exit 1
fi
printf '{PASSED}'
""",
    )


def test_the_chart_deletes_a_passing_test_pod_which_is_why_logs_are_not_asked_of_helm() -> None:
    pod = render().one("Pod", HELM_TEST_COMPONENT)
    policies = pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(",")

    assert "hook-succeeded" in policies
    # A failed pod stays, so its logs can be read after the failure.
    assert "hook-failed" not in policies


def test_a_passing_helm_test_passes_although_the_pod_is_already_deleted(tmp_path: Path) -> None:
    helm = helm_like_before_the_logs_fix(tmp_path, test_fails=False)
    kubectl = stand_in(tmp_path, "kubectl", "exit 1")

    output = run_helm_test(helm, kubectl, "rel", "ns", timeout_seconds=60)

    assert "Succeeded" in output
    assert calls(tmp_path, "helm") == ["test rel --namespace ns --timeout 60s"]
    assert calls(tmp_path, "kubectl") == []


def test_a_failing_helm_test_reports_the_test_pod_logs(tmp_path: Path) -> None:
    helm = helm_like_before_the_logs_fix(tmp_path, test_fails=True)
    kubectl = stand_in(tmp_path, "kubectl", "echo '[pod/rel-helm-test/check] FAIL: not allowed'")

    with pytest.raises(CommandFailedError) as failure:
        run_helm_test(helm, kubectl, "rel", "ns", timeout_seconds=60)

    assert "FAIL: not allowed" in str(failure.value)
    assert "pod rel-helm-test failed" in str(failure.value)
    (logs_call,) = calls(tmp_path, "kubectl")
    assert logs_call.startswith("logs --namespace ns --selector ")
    assert (
        f"app.kubernetes.io/instance=rel,app.kubernetes.io/component={HELM_TEST_COMPONENT}"
        in logs_call
    )


def test_unreadable_test_pod_logs_still_report_the_helm_failure(tmp_path: Path) -> None:
    helm = helm_like_before_the_logs_fix(tmp_path, test_fails=True)
    kubectl = stand_in(tmp_path, "kubectl", "echo 'connection refused' >&2; exit 1")

    with pytest.raises(CommandFailedError) as failure:
        run_helm_test(helm, kubectl, "rel", "ns", timeout_seconds=60)

    assert "pod rel-helm-test failed" in str(failure.value)
    assert "could not read them" in str(failure.value)
    assert "connection refused" in str(failure.value)


def test_the_selector_finds_the_chart_test_pod_by_its_labels() -> None:
    labels = render().one("Pod", HELM_TEST_COMPONENT)["metadata"]["labels"]

    assert labels["app.kubernetes.io/component"] == HELM_TEST_COMPONENT
    assert "app.kubernetes.io/instance" in labels
