"""The e2e suite without a cluster: it skips cleanly, its helpers work, its expectations match.

The e2e tests themselves need a cluster (CI's kind job runs them). What can be checked here is
checked here: the skip path, the kubectl/helm runner against real processes, the pure object
helpers, and that those helpers read the webhook's real mutation the way the e2e tests expect.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from gvirtus_kai_webhook.mutation import mutate_pod
from gvirtus_kai_webhook.settings import Settings

from tests.ci.buildfiles import REPO_ROOT
from tests.e2e.cluster import (
    SKIP_REASON_NO_CLUSTER,
    Cli,
    CommandFailedError,
    E2EConfig,
    image_value_overrides,
    skip_reason,
    wait_until,
)
from tests.e2e.objects import (
    allocatable,
    application_pod,
    container,
    env_value,
    expected_frontend_labels,
    frontend_endpoint,
    pick_probe_node,
    scheduling_gates,
    virtual_gpu_nodes,
    volume_projecting_annotation,
)

GPU = "nvidia.com/gpu"
FRONTEND = "gvirtus.io/frontend.allowed"
GPU_PRESENT = "nvidia.com/gpu.present"
CONTROL_PLANE = {"node-role.kubernetes.io/control-plane": ""}


def node(name: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": spec}


def test_suite_skips_every_test_with_the_reason_when_no_cluster_is_configured() -> None:
    env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/e2e", "-ra", "-p", "no:cacheprovider"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1]

    assert result.returncode == 0, result.stdout + result.stderr
    assert " skipped" in summary
    assert not any(word in summary for word in ("passed", "failed", "error"))
    assert SKIP_REASON_NO_CLUSTER in result.stdout


@pytest.mark.parametrize("value", ["", "  "])
def test_a_blank_kubeconfig_counts_as_no_cluster(value: str) -> None:
    assert skip_reason({"KUBECONFIG": value}) == SKIP_REASON_NO_CLUSTER


def test_a_kubeconfig_enables_the_suite() -> None:
    assert skip_reason({"KUBECONFIG": "/home/ci/.kube/config"}) is None


def test_config_prefers_the_helm_and_kubectl_overrides(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)

    config = E2EConfig.from_environ({"HELM": str(tool), "KUBECTL": str(tool), "PATH": ""})

    assert (config.helm, config.kubectl) == (str(tool), str(tool))
    assert config.chart == REPO_ROOT / "charts" / "gvirtus-kai"


def test_config_explains_a_missing_binary() -> None:
    with pytest.raises(FileNotFoundError, match="make tools"):
        E2EConfig.from_environ({"PATH": ""})


def test_image_overrides_point_every_image_at_prefix_and_tag() -> None:
    assert image_value_overrides("registry.test/gk/gvirtus-kai", "pr-7") == [
        "--set", "webhook.image.repository=registry.test/gk/gvirtus-kai-webhook",
        "--set", "webhook.image.tag=pr-7",
        "--set", "labeler.image.repository=registry.test/gk/gvirtus-kai-labeler",
        "--set", "labeler.image.tag=pr-7",
        "--set", "devicePlugin.image.repository=registry.test/gk/gvirtus-kai-device-plugin",
        "--set", "devicePlugin.image.tag=pr-7",
        "--set", "controller.image.repository=registry.test/gk/gvirtus-kai-controller",
        "--set", "controller.image.tag=pr-7",
    ]  # fmt: skip


def test_no_image_overrides_keep_the_chart_defaults() -> None:
    assert image_value_overrides(None, None) == []


def test_cli_returns_stdout_and_feeds_stdin() -> None:
    assert Cli("/bin/sh").run("-c", "tr a-z A-Z", stdin="kind\n") == "KIND\n"


def test_cli_failure_names_the_command_exit_code_and_stderr() -> None:
    with pytest.raises(CommandFailedError) as failure:
        Cli("/bin/sh").run("-c", "echo partial; echo 'nodes is forbidden' >&2; exit 3")

    assert failure.value.returncode == 3
    assert "/bin/sh -c" in str(failure.value)
    assert "exited with 3" in str(failure.value)
    assert "nodes is forbidden" in str(failure.value)
    assert "partial" in str(failure.value)


def test_cli_gives_up_after_its_timeout() -> None:
    with pytest.raises(CommandFailedError, match=r"timed out after 0\.2s"):
        Cli("/bin/sh", timeout_seconds=0.2).run("-c", "sleep 30")


def test_cli_json_appends_the_output_flag_and_parses_the_object() -> None:
    # The script prints the object only when its arguments are exactly "-o json".
    script = """[ "$*" = "-o json" ] && echo '{"kind": "List", "items": []}'"""

    assert Cli("/bin/sh").json("-c", script, "sh") == {"kind": "List", "items": []}


def test_cli_json_rejects_output_that_is_not_an_object() -> None:
    with pytest.raises(AssertionError, match="not an object"):
        Cli("/bin/sh").json("-c", "echo '[]' # ")


def test_wait_until_returns_the_first_accepted_observation() -> None:
    observations = iter([1, 2, 3, 4])

    found = wait_until(
        lambda: next(observations), lambda n: n >= 3, what="3", timeout=30, interval=0
    )

    assert found == 3


def test_wait_until_reports_what_it_waited_for_and_the_last_observation() -> None:
    expected = r"waiting for the labeler; last observed: \{'n1': None\}"
    with pytest.raises(AssertionError, match=expected):
        wait_until(lambda: {"n1": None}, lambda _: False, what="the labeler", timeout=0)


def test_probe_node_is_a_gpu_less_schedulable_worker() -> None:
    nodes = [
        node("a-control-plane", CONTROL_PLANE),
        node("b-gpu", {GPU_PRESENT: "true"}),
        node("c-cordoned", {}, unschedulable=True),
        node("d-worker", {}),
        node("e-worker", {}),
    ]

    assert pick_probe_node(nodes, GPU_PRESENT) == "d-worker"


def test_probe_node_falls_back_to_a_control_plane_on_single_node_clusters() -> None:
    assert pick_probe_node([node("solo", CONTROL_PLANE)], GPU_PRESENT) == "solo"


def test_probe_node_needs_a_node_without_a_gpu() -> None:
    with pytest.raises(LookupError, match="no schedulable node"):
        pick_probe_node([node("gpu", {GPU_PRESENT: "true"})], GPU_PRESENT)


def test_labeler_expectation_keeps_existing_values_and_defaults_the_rest() -> None:
    before = {"n1": {FRONTEND: "false"}, "n2": {}}

    assert expected_frontend_labels(before, FRONTEND, "true") == {"n1": "false", "n2": "true"}


def test_virtual_gpu_nodes_are_frontend_nodes_without_a_physical_gpu() -> None:
    nodes = [
        node("cp", {FRONTEND: "true", **CONTROL_PLANE}),
        node("gpu", {FRONTEND: "true", GPU_PRESENT: "true"}),
        node("opted-out", {FRONTEND: "false"}),
        node("unlabelled", {}),
        node("worker", {FRONTEND: "true", GPU_PRESENT: "false"}),
    ]

    assert virtual_gpu_nodes(nodes, FRONTEND, GPU_PRESENT) == ["cp", "worker"]


def test_allocatable_reads_the_extended_resource_as_a_string() -> None:
    status = {"status": {"allocatable": {GPU: "16", "cpu": "2"}}}

    assert allocatable(status, GPU) == "16"
    assert allocatable({"status": {}}, GPU) is None


def mutated_application_pod(placement: str) -> dict[str, Any]:
    """The e2e suite's enabled pod after the webhook's real mutation (what a dry run returns)."""
    pod = application_pod(
        "apps", enable_label="gvirtus.io/enabled", gpu_resource=GPU,
        node_selector={"kubernetes.io/os": "linux"},
    )  # fmt: skip
    mutation = mutate_pod(copy.deepcopy(pod), Settings(placement=placement), "10.244.1.7")
    patch = [operation.model_dump() for operation in mutation.patch]
    mutated: dict[str, Any] = jsonpatch.apply_patch(pod, patch)
    return mutated


@pytest.fixture
def webhook_output() -> dict[str, Any]:
    """Pinned at admission (placement dns), so the pod carries its frontend config."""
    return mutated_application_pod("dns")


def test_e2e_reads_the_backend_endpoint_the_webhook_writes(webhook_output: dict[str, Any]) -> None:
    assert frontend_endpoint(webhook_output) == {
        "suite": "tcp/ip",
        "protocol": "tcp",
        "server_address": "10.244.1.7",
        "port": "9999",
    }


def test_e2e_reads_the_gate_the_webhook_sets_with_the_controller() -> None:
    gated = mutated_application_pod("controller")
    assert scheduling_gates(gated) == ["gvirtus.io/backend"]
    with pytest.raises(AssertionError, match=r"no gvirtus\.io/properties annotation"):
        frontend_endpoint(gated)  # the controller writes it later


def test_e2e_finds_the_config_volume_mount_and_env_the_webhook_adds(
    webhook_output: dict[str, Any],
) -> None:
    app = container(webhook_output, "app")
    volume = volume_projecting_annotation(webhook_output, "gvirtus.io/properties")
    config_file = "/usr/local/gvirtus/etc/properties.json"

    assert volume is not None
    assert any(m["name"] == volume and m["mountPath"] == config_file for m in app["volumeMounts"])
    assert env_value(app, "GVIRTUS_CONFIG") == config_file


def test_e2e_expects_the_node_selector_the_webhook_merges(webhook_output: dict[str, Any]) -> None:
    assert webhook_output["spec"]["nodeSelector"] == {
        "kubernetes.io/os": "linux",
        FRONTEND: "true",
    }


def test_e2e_reports_a_config_whose_threads_would_reach_different_backends(
    webhook_output: dict[str, Any],
) -> None:
    annotations = webhook_output["metadata"]["annotations"]
    config = json.loads(annotations["gvirtus.io/properties"])
    config["communicator"][-1]["endpoint"]["server_address"] = "10.244.1.8"
    annotations["gvirtus.io/properties"] = json.dumps(config)

    with pytest.raises(AssertionError, match="name different backends"):
        frontend_endpoint(webhook_output)


def test_e2e_reports_a_pod_the_webhook_did_not_touch() -> None:
    pod = application_pod("apps", enable_label=None, gpu_resource=GPU, node_selector={})

    with pytest.raises(AssertionError, match=r"no gvirtus\.io/properties annotation"):
        frontend_endpoint(pod)


def test_e2e_reads_the_scheduling_gates_of_a_pod() -> None:
    pod = application_pod("apps", enable_label=None, gpu_resource=GPU, node_selector={}, name="p")
    assert pod["metadata"]["name"] == "p"
    assert scheduling_gates(pod) == []
    pod["spec"]["schedulingGates"] = [{"name": "example.com/other"}, {"name": "gvirtus.io/backend"}]
    assert scheduling_gates(pod) == ["example.com/other", "gvirtus.io/backend"]
