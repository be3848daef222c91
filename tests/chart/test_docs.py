"""The documentation says what the chart does: defaults, names, versions, settings and links.

docs/configuration.md's table of the most used values, the naming rule of cluster-scoped objects
and the minimum Kubernetes version are checked against the chart as rendered, and each service's
settings table against its Settings class (the tables are written from it: ``make docs``), so a
change to the chart or the settings that the docs do not follow fails here.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import values_table
from tests.chart.conftest import CHART, NAMESPACE, ROOT, env_of, load_values, run_helm
from tests.scriptmodule import load_script

README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
OPERATIONS = ROOT / "docs" / "operations.md"
CHART_README = CHART / "README.md"
DOCUMENTS = [README, CHART_README, *sorted((ROOT / "docs").glob("*.md"))]
# values.yaml key of each GVirtuS-KAI image -> the component in its image name.
IMAGES = {
    "webhook": "webhook",
    "controller": "controller",
    "labeler": "labeler",
    "devicePlugin": "device-plugin",
}
SWITCHES = ("labeler", "devicePlugin", "backend", "controller", "webhook")
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
TABLE_ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| `(?P<default>[^`]*)` \|")


def _values_rows() -> list[tuple[str, str]]:
    text = CONFIGURATION.read_text()
    section = text.split("## Chart values", 1)[1].split("\n## ", 1)[0]
    return [
        (m["key"], m["default"]) for line in section.splitlines() if (m := TABLE_ROW.match(line))
    ]


def test_the_most_used_values_table_has_rows() -> None:
    assert len(_values_rows()) >= 20


@pytest.mark.parametrize(("key", "default"), _values_rows(), ids=lambda x: str(x))
def test_each_documented_default_is_the_default_in_values_yaml(key: str, default: str) -> None:
    values = load_values()
    if key == "<component>.enabled":
        assert {name: values[name]["enabled"] for name in SWITCHES} == dict.fromkeys(SWITCHES, True)
        assert default == "true"
    elif key == "<component>.image.repository":
        for name, component in IMAGES.items():
            expected = default.replace("<component>", component)
            assert values[name]["image"]["repository"] == expected, name
    else:
        documented: Any = yaml.safe_load(default)
        assert values_table.lookup(values, tuple(key.split("."))) == documented


def _rendered(release: str) -> list[dict[str, Any]]:
    text = run_helm("template", release, str(CHART), "--namespace", NAMESPACE, "--skip-tests")
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("document", [OPERATIONS, CHART_README], ids=lambda p: p.name)
def test_the_naming_rule_and_its_examples_are_the_names_the_chart_renders(document: Path) -> None:
    text = " ".join(document.read_text().split())  # examples may wrap across lines
    assert "`<fullname>-<component>.<namespace>`" in text
    default_names = {
        d["metadata"]["name"] for d in _rendered("gvirtus-kai") if d["kind"] in CLUSTER_SCOPED
    }
    for name in default_names:
        assert f"`{name}`" in text, name
    (foo_webhook,) = [
        d["metadata"]["name"]
        for d in _rendered("foo")
        if d["kind"] == "MutatingWebhookConfiguration"
    ]
    assert f"`{foo_webhook}`" in text


def test_the_docs_require_the_kubernetes_version_the_chart_requires() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    match = re.fullmatch(r">=1\.(\d+)\.0-0", chart["kubeVersion"])
    assert match, chart["kubeVersion"]
    minor = int(match[1])
    assert f"Kubernetes ≥ 1.{minor}," in README.read_text()
    assert f"Requires Kubernetes 1.{minor} or newer" in CHART_README.read_text()
    for document in DOCUMENTS:
        for other in re.findall(
            r"Kubernetes (?:≥ |>= )?1\.(\d+)(?: or newer|,)", document.read_text()
        ):
            assert int(other) == minor, (document.name, other)


SERVICES = {
    "gvirtus-webhook": ("Deployment", "webhook"),
    "gvirtus-controller": ("Deployment", "controller"),
    "gvirtus-labeler": ("DaemonSet", "labeler"),
    "gvirtus-device-plugin": ("DaemonSet", "device-plugin"),
}


def _service_section(command: str) -> str:
    sections = CONFIGURATION.read_text().split("\n### ")
    (section,) = [s for s in sections if f"(`{command}" in s.splitlines()[0]]
    return section


@pytest.mark.parametrize("command", sorted(SERVICES))
def test_every_setting_the_chart_passes_is_in_the_services_settings_table(command: str) -> None:
    kind, component = SERVICES[command]
    rendered = _rendered("gvirtus-kai")
    (workload,) = [
        d
        for d in rendered
        if d["kind"] == kind and d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    section = _service_section(command)
    undocumented = [
        name for name in env_of(workload) if f"`{name.removeprefix('GVIRTUS_KAI_')}`" not in section
    ]
    assert not undocumented


SETTINGS_MODULES = {
    "gvirtus-webhook": "gvirtus_kai_webhook.settings",
    "gvirtus-controller": "gvirtus_kai_controller.settings",
    "gvirtus-labeler": "gvirtus_kai_labeler.settings",
    "gvirtus-device-plugin": "gvirtus_kai_device_plugin.settings",
}
TABLES = load_script(ROOT / "docs" / "settings_tables.py", "settings_tables")


def test_the_settings_tables_are_the_ones_the_settings_classes_render() -> None:
    text = CONFIGURATION.read_text()
    assert TABLES.generated(text) == text, "run make docs to write them from the Settings classes"


@pytest.mark.parametrize("command", sorted(SETTINGS_MODULES))
def test_each_service_section_holds_the_table_of_its_own_settings(command: str) -> None:
    assert f"<!-- settings: {SETTINGS_MODULES[command]} -->" in _service_section(command)


def test_a_setting_added_to_a_class_makes_its_table_out_of_date() -> None:
    # The drift check above must be able to fail: a table written before a new field differs.
    labeler = importlib.import_module("gvirtus_kai_labeler.settings").Settings
    bigger = type("Settings", (labeler,), {"__annotations__": {"extra_knob": int}, "extra_knob": 1})
    text = CONFIGURATION.read_text()
    written = TABLES.generated(text, lambda module: bigger if "labeler" in module else labeler)
    assert "| `EXTRA_KNOB` | `1` |" in written
    assert written != TABLES.generated(text)


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_heading(document: Path) -> None:
    for match in LINK.finditer(document.read_text()):
        target = match["target"]
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        assert file.exists(), target
        if anchor:
            assert anchor in _anchors(file.read_text()), target
