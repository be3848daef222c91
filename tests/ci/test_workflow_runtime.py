"""What a first GitHub Actions run would reveal and actionlint does not: shell options and versions.

GitHub runs a `run:` block with `bash -e {0}` unless the workflow names the shell; only an explicit
`shell: bash` adds `-o pipefail`, without which `x=$(failing | tail -n 1)` carries on with an empty
value. kubectl supports one minor version of skew against the API server, and helm/kind-action
installs its own default kubectl unless told which one.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.ci.test_workflows import all_workflows, load, steps

VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


def kubernetes_minor(text: str) -> tuple[int, int]:
    match = VERSION.search(text)
    assert match, f"no version in {text!r}"
    return int(match.group(1)), int(match.group(2))


def resolve_env(value: str, workflow: dict[str, Any]) -> str:
    """`${{ env.NAME }}` replaced by the workflow-level env value."""
    return re.sub(r"\$\{\{\s*env\.(\w+)\s*\}\}", lambda m: str(workflow["env"][m.group(1)]), value)


@pytest.mark.parametrize("name", all_workflows())
def test_every_run_step_uses_bash_with_pipefail(name: str) -> None:
    workflow = load(name)
    default_shell = (workflow.get("defaults") or {}).get("run", {}).get("shell")
    shells = {
        f"{job_id}: {step.get('name') or step['run'][:40]}": step.get("shell", default_shell)
        for job_id, step in steps(workflow)
        if "run" in step
    }

    assert shells
    assert {step: shell for step, shell in shells.items() if shell != "bash"} == {}


def kind_step() -> tuple[dict[str, Any], dict[str, Any]]:
    workflow = load("ci.yaml")
    (step,) = [
        step for _, step in steps(workflow) if step.get("uses", "").startswith("helm/kind-action")
    ]
    return workflow, step


def test_kind_installs_a_kubectl_of_the_node_images_minor_version() -> None:
    workflow, step = kind_step()
    node_image = resolve_env(step["with"]["node_image"], workflow)
    kubectl = resolve_env(step["with"].get("kubectl_version", "the action's default"), workflow)

    assert kubernetes_minor(kubectl) == kubernetes_minor(node_image)


def test_kind_gets_only_inputs_helm_kind_action_defines() -> None:
    _, step = kind_step()
    inputs = {
        "version", "config", "node_image", "cluster_name", "wait", "verbosity",
        "kubectl_version", "install_only", "ignore_failed_clean", "kubeconfig",
        "registry", "registry_image", "registry_name", "registry_port", "registry_enable_delete",
        "cloud_provider",
    }  # fmt: skip

    assert set(step["with"]) <= inputs
