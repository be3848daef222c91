"""NOTES.txt for every scenario and every combination of enabled components.

What `helm install` prints must hold up when components are switched off: no heading without
content, steps numbered 1..n, nothing about a webhook that is not installed, and every object a
`kubectl` line names exists in the same release.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from tests.chart.conftest import SCENARIOS, labels_of, render, render_notes

COMPONENTS = ("labeler", "devicePlugin", "backend", "controller", "webhook")
# The component list of the NOTES names each one like this.
LISTED_AS = {
    "labeler": "labeler",
    "devicePlugin": "device plugin",
    "backend": "backend",
    "controller": "controller",
    "webhook": "webhook",
}
COMBINATIONS = [
    dict(zip(COMPONENTS, enabled, strict=True))
    for enabled in itertools.product((True, False), repeat=len(COMPONENTS))
]
CASES = [
    pytest.param(scenario, {}, id=scenario.removesuffix("-values.yaml")) for scenario in SCENARIOS
]
CASES += [
    pytest.param(
        None,
        {f"{name}.enabled": on for name, on in combination.items()},
        id="+".join(name for name, on in combination.items() if on) or "nothing",
    )
    for combination in COMBINATIONS
]
HEADING = re.compile(r"^(?:\d+\. .*|[A-Z][\w ]*):$")
STEP = re.compile(r"^(\d+)\. ")
KUBECTL_GET = re.compile(
    r"kubectl (?:-n (?P<ns>\S+) )?get (?P<kind>[a-z]+) (?P<name>[^\s-][^\s]*)$"
)
SERVICE_NAME_SELECTOR = re.compile(r"-l kubernetes\.io/service-name=(?P<name>\S+)$")
KINDS = {
    "daemonset": "DaemonSet",
    "deployment": "Deployment",
    "service": "Service",
    "mutatingwebhookconfiguration": "MutatingWebhookConfiguration",
}


def _enabled(scenario: str | None, values: dict[str, Any]) -> set[str]:
    present = render(scenario, values).components()
    label = {"devicePlugin": "device-plugin"}
    return {name for name in COMPONENTS if label.get(name, name) in present}


@pytest.mark.parametrize(("scenario", "values"), CASES)
def test_every_heading_is_followed_by_content(scenario: str | None, values: dict[str, Any]) -> None:
    lines = render_notes(values, scenario).splitlines()
    for index, line in enumerate(lines):
        if not HEADING.match(line):
            continue
        following = [text for text in lines[index + 1 :] if text.strip()]
        assert following, f"{line!r} ends the NOTES"
        assert not HEADING.match(following[0]), f"{line!r} is followed by {following[0]!r}"


@pytest.mark.parametrize(("scenario", "values"), CASES)
def test_steps_are_numbered_from_one_without_gaps(
    scenario: str | None, values: dict[str, Any]
) -> None:
    notes = render_notes(values, scenario)
    steps = [int(m[1]) for line in notes.splitlines() if (m := STEP.match(line))]
    assert steps == list(range(1, len(steps) + 1))
    assert steps or not _enabled(scenario, values)


@pytest.mark.parametrize(("scenario", "values"), CASES)
def test_the_component_list_names_exactly_the_enabled_components(
    scenario: str | None, values: dict[str, Any]
) -> None:
    notes = render_notes(values, scenario)
    listed = {
        line.strip()[2:].split(":")[0].split(" (")[0]
        for line in notes.splitlines()
        if line.startswith("  - ")
    }
    enabled = _enabled(scenario, values)
    assert listed == {LISTED_AS[name] for name in enabled}
    assert ("Components:" in notes) == bool(enabled)


@pytest.mark.parametrize(
    "values",
    [
        {f"{name}.enabled": on for name, on in combination.items()}
        for combination in COMBINATIONS
        if not combination["webhook"]
    ],
)
def test_without_the_webhook_the_notes_give_no_webhook_advice(values: dict[str, Any]) -> None:
    assert "webhook" not in _enabled(None, values)
    notes = render_notes(values)
    assert "helm test" not in notes
    assert "Enable GVirtuS for a pod" not in notes
    assert "mutatingwebhookconfiguration" not in notes
    assert "gvirtus.io/strategy" not in notes


@pytest.mark.parametrize(("scenario", "values"), CASES)
def test_every_object_a_kubectl_line_names_is_rendered(
    scenario: str | None, values: dict[str, Any]
) -> None:
    manifests = render(scenario, values)
    rendered = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    named = 0
    for line in render_notes(values, scenario).splitlines():
        line = line.strip()
        if (match := KUBECTL_GET.search(line)) and match["kind"] in KINDS:
            named += 1
            assert (KINDS[match["kind"]], match["name"]) in rendered, line
        if match := SERVICE_NAME_SELECTOR.search(line):
            named += 1
            assert ("Service", match["name"]) in rendered, line
    assert named or not (_enabled(scenario, values) - {"labeler"})


def test_an_all_disabled_release_says_so_and_nothing_else() -> None:
    notes = render_notes({f"{name}.enabled": False for name in COMPONENTS})
    assert "Every component is disabled" in notes
    assert "kubectl" not in notes


def test_the_default_notes_explain_the_gated_wait_and_the_checks() -> None:
    notes = render_notes()
    assert sum(bool(HEADING.match(line)) for line in notes.splitlines()) == 5  # list + 4 steps
    assert "scheduling gate gvirtus.io/backend" in notes
    assert "kubectl get events -A --field-selector reason=WaitingForBackend" in notes
    assert "helm test gvirtus-kai -n gvirtus-system" in notes


def test_sed_with_the_controller_says_pods_wait_gated_as_mount_pods_do() -> None:
    notes = render_notes(scenario="sed-strategy-values.yaml")
    assert "The pod waits (Pending, scheduling gate gvirtus.io/backend)" in notes
    assert "(sed strategy by default)" in notes
    assert "DNS records" not in notes


def test_the_notes_say_how_many_cuda_threads_a_program_may_use() -> None:
    notes = render_notes(values={"webhook": {"frontendThreads": 48}})
    assert "Its frontend config serves 48 CUDA threads per program" in notes
    assert "annotation gvirtus.io/threads for more" in notes


def test_without_the_controller_every_pod_is_pinned_at_admission() -> None:
    notes = render_notes(scenario="controller-disabled-values.yaml")
    assert "Each pod is pinned at admission" in notes
    assert "controller" not in notes


def test_metrics_ports_closed_to_every_namespace_are_pointed_out() -> None:
    assert "networkPolicy.metricsNamespaceSelector" in render_notes()
    assert "networkPolicy.metricsNamespaceSelector" not in render_notes(
        scenario="controller-ha-evict-values.yaml"
    )
    assert "networkPolicy.metricsNamespaceSelector" not in render_notes(
        scenario="network-policy-disabled-values.yaml"
    )


def test_every_component_label_is_known_to_the_notes_checks() -> None:
    # The helm test pod aside, every rendered component is one the cases above switch.
    components = {labels_of(m)["app.kubernetes.io/component"] for m in render()}
    assert components - {"helm-test"} == {
        "labeler",
        "device-plugin",
        "backend",
        "controller",
        "webhook",
    }
