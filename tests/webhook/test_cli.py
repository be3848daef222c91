"""``gvirtus-kai inject``, run as the installed console script on real manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from gvirtus_kai_common.gvirtus import (
    BACKEND_ANNOTATION,
    BACKEND_GATE,
    PROPERTIES_ANNOTATION,
    frontend_config,
)
from gvirtus_kai_webhook.mutation import (
    CONFIG_ENV,
    is_sed_wrapped,
)
from gvirtus_kai_webhook.settings import Settings
from gvirtus_kai_webhook.workloads import pod_sites

from tests.dnsserver import LoopbackDnsServer
from tests.webhookproc import BACKEND_HOST

from .pods import BACKEND_IP, KUBERNETES_VERSION, assert_valid_pod, env_of

CLI = str(Path(sys.executable).with_name("gvirtus-kai"))
WORKLOADS = Path(__file__).parent / "fixtures" / "manifests" / "workloads.yaml"
MUTATED_KINDS = [
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
    "CronJob",
    "PodTemplate",
]


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GVIRTUS_KAI_")}
    return subprocess.run(
        [CLI, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


def inject(*args: str, stdin: str | None = None, **env: str) -> list[Any]:
    result = run("inject", *args, stdin=stdin, env=env)
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def is_enabled(pod: dict[str, Any]) -> bool:
    return bool(pod["metadata"].get("labels", {}).get("gvirtus.io/enabled") == "true")


def as_pod(site_pod: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", **site_pod}


def loaded_workloads() -> list[Any]:
    return list(yaml.safe_load_all(WORKLOADS.read_text()))


ENABLED = {"labels": {"gvirtus.io/enabled": "true"}}


@pytest.fixture
def dns() -> Iterator[LoopbackDnsServer]:
    with LoopbackDnsServer() as server:
        yield server


# --- what gets mutated -----------------------------------------------------------------------


def test_every_workload_kind_gets_its_pod_template_mutated() -> None:
    documents = inject("-f", str(WORKLOADS), "--backend-address", BACKEND_IP)
    mutated_kinds = []
    for document in documents:
        for site in pod_sites(document):
            annotation = site.pod["metadata"]["annotations"][PROPERTIES_ANNOTATION]
            assert json.loads(annotation) == frontend_config(
                BACKEND_IP, Settings().backend_port, Settings().plugins
            )
            assert site.pod["spec"]["nodeSelector"]["gvirtus.io/frontend.allowed"] == "true"
            mutated_kinds.append(site.kind)
    assert mutated_kinds == MUTATED_KINDS


def test_every_output_document_is_valid_for_its_kind() -> None:
    for document in inject("-f", str(WORKLOADS), "--backend-address", BACKEND_IP):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        for site in pod_sites(document):
            assert_valid_pod(as_pod(site.pod))


def test_documents_keep_their_order_and_others_pass_through_unchanged() -> None:
    before = loaded_workloads()
    after = inject("-f", str(WORKLOADS), "--backend-address", BACKEND_IP)
    assert [d["kind"] for d in after] == [d["kind"] for d in before]
    assert after[0] == before[0]  # ConfigMap
    assert after[3] == before[3]  # Service


def test_per_pod_annotations_in_templates_are_honoured() -> None:
    job = inject("-f", str(WORKLOADS), "--backend-address", BACKEND_IP)[8]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)[CONFIG_ENV] == "/opt/gvirtus/etc/properties.json"


def test_only_the_pod_template_label_counts_not_the_workload_label() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"gvirtus.io/enabled": "true"}},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]},
            },
        },
    }
    out = inject("-f", "-", "--backend-address", BACKEND_IP, stdin=yaml.safe_dump(deployment))
    assert out == [deployment]


def test_a_custom_resource_with_a_workload_kind_name_is_left_alone() -> None:
    volcano_job = {
        "apiVersion": "batch.volcano.sh/v1alpha1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {"template": {"metadata": {"labels": {"gvirtus.io/enabled": "true"}}}},
    }
    out = inject("-f", "-", "--backend-address", BACKEND_IP, stdin=yaml.safe_dump(volcano_job))
    assert out == [volcano_job]


def test_items_of_a_list_are_mutated() -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": loaded_workloads()[1:3]}
    (out,) = inject("-f", "-", "--backend-address", BACKEND_IP, stdin=yaml.safe_dump(listing))
    sites = list(pod_sites(out))
    assert [s.path for s in sites] == [("items", 0), ("items", 1, "spec", "template")]
    assert all(PROPERTIES_ANNOTATION in s.pod["metadata"]["annotations"] for s in sites)


def test_stdin_is_read_with_dash() -> None:
    out = inject("-f", "-", "--backend-address", BACKEND_IP, stdin=WORKLOADS.read_text())
    assert len(out) == len(loaded_workloads())


def test_empty_documents_are_kept() -> None:
    text = "---\n---\n" + yaml.safe_dump(loaded_workloads()[0]) + "---\n"
    out = inject("-f", "-", "--backend-address", BACKEND_IP, stdin=text)
    assert out == [None, loaded_workloads()[0], None]


def test_output_injected_again_is_unchanged() -> None:
    first = run("inject", "-f", str(WORKLOADS), "--backend-address", BACKEND_IP)
    second = run("inject", "-f", "-", "--backend-address", BACKEND_IP, stdin=first.stdout)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_a_new_backend_address_updates_earlier_output() -> None:
    first = run("inject", "-f", str(WORKLOADS), "--backend-address", "10.96.0.10")
    again = inject("-f", "-", "--backend-address", BACKEND_IP, stdin=first.stdout)
    direct = inject("-f", str(WORKLOADS), "--backend-address", BACKEND_IP)
    assert again == direct


def test_output_has_no_yaml_anchors_and_keeps_long_values_on_one_line() -> None:
    result = run("inject", "-f", str(WORKLOADS), "--backend-address", BACKEND_IP)
    assert "&id" not in result.stdout
    assert "*id" not in result.stdout
    key = f"{PROPERTIES_ANNOTATION}: "
    annotation_lines = [line for line in result.stdout.splitlines() if key in line]
    assert len(annotation_lines) == len(MUTATED_KINDS)
    assert all("secure_application" in line for line in annotation_lines)


# --- flags and settings ----------------------------------------------------------------------


def test_strategy_flag_overrides_the_setting() -> None:
    pod = loaded_workloads()[1]
    pod["spec"]["containers"][0]["command"] = ["/vectorAdd"]
    out = inject(
        "-f", "-", "--backend-address", BACKEND_IP, "--strategy", "sed",
        stdin=yaml.safe_dump(pod), GVIRTUS_KAI_STRATEGY="mount",
    )  # fmt: skip
    command = out[0]["spec"]["containers"][0]["command"]
    assert is_sed_wrapped(command)
    assert command[4:] == ["/vectorAdd"]


def test_settings_come_from_the_environment() -> None:
    (pod,) = inject(
        "-f", "-", "--backend-address", BACKEND_IP,
        stdin=yaml.safe_dump(loaded_workloads()[1]), GVIRTUS_KAI_BACKEND_PORT="40000",
    )  # fmt: skip
    config = json.loads(pod["metadata"]["annotations"][PROPERTIES_ANNOTATION])
    assert config["communicator"][0]["endpoint"]["port"] == "40000"


@pytest.mark.parametrize("address", ["fd00::2a", "gvirtus-backend", "10.0.0.256", "10.0.0.1:9999"])
def test_a_backend_address_that_is_not_ipv4_is_a_usage_error(address: str) -> None:
    result = run("inject", "-f", str(WORKLOADS), "--backend-address", address)
    assert result.returncode == 2
    assert "is not an IPv4 address" in result.stderr
    assert "no host names, no IPv6" in result.stderr
    assert result.stdout == ""


def test_a_pinned_pod_names_its_backend_with_the_backend_port() -> None:
    (pod,) = inject(
        "-f", "-", "--backend-address", BACKEND_IP, stdin=yaml.safe_dump(loaded_workloads()[1])
    )
    assert pod["metadata"]["annotations"][BACKEND_ANNOTATION] == f"{BACKEND_IP}:9999"
    assert "schedulingGates" not in pod["spec"]


def test_version_is_printed() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("gvirtus-kai ")


# --- DNS like the webhook --------------------------------------------------------------------


def test_without_backend_address_the_backend_service_is_resolved(dns: LoopbackDnsServer) -> None:
    dns.set_a(BACKEND_HOST, "10.96.7.7")
    documents = inject("-f", str(WORKLOADS), GVIRTUS_KAI_DNS_NAMESERVERS=dns.nameserver)
    annotation = documents[1]["metadata"]["annotations"][PROPERTIES_ANNOTATION]
    assert json.loads(annotation)["communicator"][0]["endpoint"]["server_address"] == "10.96.7.7"
    assert dns.query_count(BACKEND_HOST, "A") == 1  # one lookup for all nine documents


def test_an_unresolvable_backend_fails_naming_the_host(dns: LoopbackDnsServer) -> None:
    dns.set_nxdomain(BACKEND_HOST)
    result = run(
        "inject", "-f", str(WORKLOADS), env={"GVIRTUS_KAI_DNS_NAMESERVERS": dns.nameserver}
    )
    assert result.returncode == 1
    assert f"no ready GVirtuS backend was found behind {BACKEND_HOST}" in result.stderr
    assert "NXDOMAIN" in result.stderr
    assert "--backend-address" in result.stderr  # what to do outside the cluster
    assert result.stdout == ""


def test_an_ipv6_only_backend_fails_saying_gvirtus_needs_ipv4(dns: LoopbackDnsServer) -> None:
    dns.set_aaaa(BACKEND_HOST, "fd00::10")
    result = run(
        "inject", "-f", str(WORKLOADS), env={"GVIRTUS_KAI_DNS_NAMESERVERS": dns.nameserver}
    )
    assert result.returncode == 1
    assert "has only IPv6 addresses (fd00::10)" in result.stderr
    assert "GVirtuS needs an IPv4 server_address" in result.stderr
    assert "--backend-address" in result.stderr
    assert result.stdout == ""


def test_each_pod_is_pinned_to_one_ready_backend_chosen_uniformly(dns: LoopbackDnsServer) -> None:
    backends = ["10.244.1.7", "10.244.2.9", "10.244.3.4"]
    dns.set_a(BACKEND_HOST, *backends)
    pods = [{**loaded_workloads()[1], "metadata": {**ENABLED, "name": f"p{n}"}} for n in range(300)]
    out = inject(
        "-f", "-", stdin=yaml.safe_dump_all(pods), GVIRTUS_KAI_DNS_NAMESERVERS=dns.nameserver
    )
    chosen = [pod["metadata"]["annotations"][BACKEND_ANNOTATION] for pod in out]
    counts = {backend: chosen.count(f"{backend}:9999") for backend in backends}
    assert sum(counts.values()) == 300  # every pod on one of the A records
    # Each expects 100 (standard deviation about 8): a bound of 50 fails a uniform choice
    # with odds below 1e-9, and a choice that favours one backend.
    assert all(50 < count < 150 for count in counts.values()), counts
    for pod in out:
        properties = json.loads(pod["metadata"]["annotations"][PROPERTIES_ANNOTATION])
        address = properties["communicator"][0]["endpoint"]["server_address"]
        assert pod["metadata"]["annotations"][BACKEND_ANNOTATION] == f"{address}:9999"
    assert dns.query_count(BACKEND_HOST, "A") == 1


def test_dns_pinned_output_injected_again_keeps_its_backends(dns: LoopbackDnsServer) -> None:
    dns.set_a(BACKEND_HOST, "10.244.1.7", "10.244.2.9", "10.244.3.4")
    env = {"GVIRTUS_KAI_DNS_NAMESERVERS": dns.nameserver}
    first = run("inject", "-f", str(WORKLOADS), env=env)
    second = run("inject", "-f", "-", stdin=first.stdout, env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_no_lookup_happens_when_no_document_is_enabled(dns: LoopbackDnsServer) -> None:
    text = yaml.safe_dump(loaded_workloads()[0])
    out = inject("-f", "-", stdin=text, GVIRTUS_KAI_DNS_NAMESERVERS=dns.nameserver)
    assert out == loaded_workloads()[:1]
    assert dns.query_count(BACKEND_HOST) == 0


# --- documents it does not change come out as they went in ----------------------------------

UNCHANGED = """# a comment before anything
apiVersion: v1
kind: ConfigMap
metadata: {name: "settings", labels: {tier: 'web'}}   # flow style, two kinds of quotes
data:
  answer: "42"
---
---
"""
ENABLED_POD = """apiVersion: v1
kind: Pod
metadata:
  name: cuda
  labels:
    gvirtus.io/enabled: "true"
spec:
  containers:
  - name: app
    image: cuda
    resources: {limits: {nvidia.com/gpu: 1}}
"""
TRAILER = """--- # the last one
{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"}}
...
"""


def test_documents_it_does_not_change_pass_through_byte_for_byte() -> None:
    text = UNCHANGED + ENABLED_POD + TRAILER
    result = run("inject", "-f", "-", "--backend-address", BACKEND_IP, stdin=text)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(UNCHANGED)
    assert result.stdout.endswith(TRAILER)
    pod = yaml.safe_load(result.stdout[len(UNCHANGED) : -len(TRAILER)])
    assert PROPERTIES_ANNOTATION in pod["metadata"]["annotations"]


def test_a_stream_with_nothing_to_inject_comes_out_unchanged() -> None:
    text = UNCHANGED + TRAILER
    result = run("inject", "-f", "-", "--backend-address", BACKEND_IP, stdin=text)
    assert (result.returncode, result.stdout) == (0, text)


# --- failures --------------------------------------------------------------------------------


def test_invalid_yaml_fails_with_the_position_and_writes_nothing() -> None:
    result = run("inject", "-f", "-", "--backend-address", BACKEND_IP, stdin="a: [1, 2\nb: c\n")
    assert result.returncode == 1
    assert "is not valid YAML" in result.stderr
    assert "line" in result.stderr
    assert result.stdout == ""


def test_a_missing_file_fails() -> None:
    result = run("inject", "-f", "/nonexistent/manifest.yaml", "--backend-address", BACKEND_IP)
    assert result.returncode == 1
    assert "cannot read /nonexistent/manifest.yaml" in result.stderr


def test_every_denial_is_reported_with_document_kind_and_name_and_nothing_written() -> None:
    documents = loaded_workloads()
    documents[2]["spec"]["template"]["metadata"]["annotations"]["gvirtus.io/strategy"] = "env"
    documents[9]["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"] = {
        "gvirtus.io/containers": "missing"
    }
    text = yaml.safe_dump_all(documents)
    result = run("inject", "-f", "-", "--backend-address", BACKEND_IP, stdin=text)
    assert result.returncode == 1
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert errors[0].startswith("error: document 3 (Deployment ml/trainer at spec.template): ")
    assert "'env' is not a GVirtuS strategy" in errors[0]
    assert errors[1].startswith(
        "error: document 10 (CronJob research/nightly-eval at spec.jobTemplate.spec.template): "
    )


def test_an_unquoted_true_enable_label_is_an_error_asking_for_quotes() -> None:
    text = WORKLOADS.read_text().replace(
        'gvirtus.io/enabled: "true"', "gvirtus.io/enabled: true", 1
    )
    result = run("inject", "-f", "-", "--backend-address", BACKEND_IP, stdin=text)
    assert result.returncode == 1
    assert result.stderr.startswith("error: document 2 (Pod ml/cuda-smoke): label gvirtus.io/")
    assert 'quote it: gvirtus.io/enabled: "true"' in result.stderr
    assert result.stdout == ""


def test_warnings_go_to_stderr_and_the_output_is_still_written() -> None:
    pod = loaded_workloads()[1]
    del pod["spec"]["containers"][0]["resources"]
    result = run("inject", "-f", "-", "--backend-address", BACKEND_IP, stdin=yaml.safe_dump(pod))
    assert result.returncode == 0
    assert result.stderr.startswith("warning: document 1 (Pod ml/cuda-smoke): GVirtuS: add")
    assert PROPERTIES_ANNOTATION in result.stdout


def test_a_closed_stdout_fails_without_a_traceback() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        result = subprocess.run(
            [CLI, "inject", "-f", str(WORKLOADS), "--backend-address", BACKEND_IP],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert "stdout was closed" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_settings_fail_naming_the_setting() -> None:
    result = run(
        "inject", "-f", str(WORKLOADS), "--backend-address", BACKEND_IP,
        env={"GVIRTUS_KAI_BACKEND_PORT": "0"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "GVIRTUS_KAI_BACKEND_PORT" in result.stderr


# --- placement -------------------------------------------------------------------------------


def test_controller_placement_gates_mount_pods_without_any_lookup(dns: LoopbackDnsServer) -> None:
    dns.set_nxdomain(BACKEND_HOST)
    out = inject(
        "-f", str(WORKLOADS), "--placement", "controller",
        GVIRTUS_KAI_DNS_NAMESERVERS=dns.nameserver,
    )  # fmt: skip
    enabled = [site.pod for document in out for site in pod_sites(document) if is_enabled(site.pod)]
    assert len(enabled) == len(MUTATED_KINDS)
    for pod in enabled:
        assert [gate["name"] for gate in pod["spec"]["schedulingGates"]] == [BACKEND_GATE]
        annotations = pod["metadata"].get("annotations") or {}
        assert BACKEND_ANNOTATION not in annotations
        assert PROPERTIES_ANNOTATION not in annotations
        assert_valid_pod(as_pod(pod))
    assert dns.query_count(BACKEND_HOST) == 0


def test_the_placement_setting_is_honoured_when_set(dns: LoopbackDnsServer) -> None:
    dns.set_nxdomain(BACKEND_HOST)
    (pod,) = inject(
        "-f", "-", stdin=yaml.safe_dump(loaded_workloads()[1]),
        GVIRTUS_KAI_PLACEMENT="controller", GVIRTUS_KAI_DNS_NAMESERVERS=dns.nameserver,
    )  # fmt: skip
    assert pod["spec"]["schedulingGates"] == [{"name": BACKEND_GATE}]
    assert dns.query_count(BACKEND_HOST) == 0


def test_without_the_setting_or_the_flag_pods_are_pinned() -> None:
    (pod,) = inject(
        "-f", "-", "--backend-address", BACKEND_IP, stdin=yaml.safe_dump(loaded_workloads()[1])
    )
    assert "schedulingGates" not in pod["spec"]
    assert pod["metadata"]["annotations"][BACKEND_ANNOTATION] == f"{BACKEND_IP}:9999"


def test_the_flag_wins_over_the_setting() -> None:
    (pod,) = inject(
        "-f", "-", "--placement", "dns", "--backend-address", BACKEND_IP,
        stdin=yaml.safe_dump(loaded_workloads()[1]), GVIRTUS_KAI_PLACEMENT="controller",
    )  # fmt: skip
    assert "schedulingGates" not in pod["spec"]


def test_sed_pods_are_gated_like_mount_pods_with_controller_placement(
    dns: LoopbackDnsServer,
) -> None:
    dns.set_a(BACKEND_HOST, "10.244.1.7")
    gated, sed = loaded_workloads()[1], loaded_workloads()[1]
    sed["metadata"] = {**ENABLED, "name": "sed", "annotations": {"gvirtus.io/strategy": "sed"}}
    sed["spec"]["containers"][0]["command"] = ["/vectorAdd"]
    out = inject(
        "-f", "-", "--placement", "controller", stdin=yaml.safe_dump_all([gated, sed]),
        GVIRTUS_KAI_DNS_NAMESERVERS=dns.nameserver,
    )  # fmt: skip
    for pod in out:
        assert pod["spec"]["schedulingGates"] == [{"name": BACKEND_GATE}]
        assert BACKEND_ANNOTATION not in (pod["metadata"].get("annotations") or {})
    assert is_sed_wrapped(out[1]["spec"]["containers"][0]["command"])
    assert dns.query_count(BACKEND_HOST, "A") == 0


def test_an_unknown_placement_is_a_usage_error() -> None:
    result = run("inject", "-f", str(WORKLOADS), "--placement", "nearest")
    assert result.returncode == 2
    assert "invalid choice: 'nearest'" in result.stderr


def test_an_invalid_placement_setting_fails_naming_it() -> None:
    result = run("inject", "-f", str(WORKLOADS), env={"GVIRTUS_KAI_PLACEMENT": "nearest"})
    assert result.returncode == 2
    assert "GVIRTUS_KAI_PLACEMENT" in result.stderr


def test_help_documents_the_placement_choice() -> None:
    result = run("inject", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--placement {controller,dns}" in text
    assert "scheduling gate gvirtus.io/backend" in text
    assert "Default: GVIRTUS_KAI_PLACEMENT when it is set, else dns" in text
