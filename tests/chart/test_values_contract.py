"""values.yaml, values.schema.json and the README values table stay one contract."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.chart import values_table
from tests.chart.conftest import CHART, HelmError, load_values, render

SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/definitions/")
        node = SCHEMA["definitions"][name]
    return node


def _schema_at(path: tuple[str, ...]) -> dict[str, Any] | None:
    """The schema that governs ``path`` in values, or None when the schema forbids it."""
    node = _resolve(SCHEMA)
    for part in path:
        if part in node.get("properties", {}):
            node = _resolve(node["properties"][part])
        elif isinstance(node.get("additionalProperties"), dict):
            node = _resolve(node["additionalProperties"])
        else:
            return None
    return node


def _schema_property_paths(
    node: dict[str, Any], values: Any, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """Declared properties of every object schema reached along values.yaml's non-empty maps.

    An empty map (a node selector, a label selector) is one value the user fills in; the keys its
    schema declares describe that input, not defaults values.yaml must carry.
    """
    node = _resolve(node)
    paths = []
    for key, child in node.get("properties", {}).items():
        path = (*prefix, key)
        paths.append(path)
        if isinstance(values, dict) and isinstance(values.get(key), dict) and values[key]:
            paths += _schema_property_paths(child, values[key], path)
    return paths


def _object_schemas(node: dict[str, Any], where: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if node.get("type") == "object":
        found.append((where or "<root>", node))
    for key, child in node.get("properties", {}).items():
        found += _object_schemas(child, f"{where}.{key}")
    for key, child in node.get("definitions", {}).items():
        found += _object_schemas(child, f"#/definitions/{key}")
    if isinstance(node.get("items"), dict):
        found += _object_schemas(node["items"], f"{where}[]")
    return found


def test_every_value_in_values_yaml_is_typed_by_the_schema() -> None:
    untyped = [".".join(p) for p in values_table.leaf_paths(load_values()) if _schema_at(p) is None]
    assert not untyped


def test_every_schema_property_exists_in_values_yaml() -> None:
    values = load_values()
    missing = []
    for path in _schema_property_paths(SCHEMA, values):
        try:
            values_table.lookup(values, path)
        except KeyError:
            missing.append(".".join(path))
    assert not missing


def test_every_object_in_the_schema_closes_its_keys() -> None:
    # Closed by additionalProperties: false, or typed entries for free-form maps
    # (labels, annotations, resource lists); affinity lists its three allowed keys.
    open_objects = [
        where
        for where, node in _object_schemas(SCHEMA)
        if "additionalProperties" not in node and "propertyNames" not in node
    ]
    assert not open_objects


def test_every_value_is_documented_with_a_dash_dash_comment() -> None:
    documented = {d.path for d in values_table.parse((CHART / "values.yaml").read_text())}
    undocumented = [
        ".".join(leaf)
        for leaf in values_table.leaf_paths(load_values())
        if not any(leaf[: n + 1] in documented for n in range(len(leaf)))
    ]
    assert not undocumented


def test_readme_values_table_matches_values_yaml() -> None:
    readme = (CHART / "README.md").read_text()
    expected = values_table.expected_readme(readme, (CHART / "values.yaml").read_text())
    assert readme == expected, "run: .venv/bin/python -m tests.chart.values_table"


def test_values_table_rows_follow_the_comments_above_each_key() -> None:
    docs = values_table.parse(
        "a: 1\n# -- Alpha\n# continues.\nb:\n  # -- Nested\n  c: [x]\n  d:\n    - e: 1\n"
    )
    assert [(d.key, d.description, d.default) for d in docs] == [
        ("b", "Alpha continues.", {"c": ["x"], "d": [{"e": 1}]}),
        ("b.c", "Nested", ["x"]),
    ]


def test_schema_rejects_a_misspelled_key_naming_it() -> None:
    with pytest.raises(HelmError) as failure:
        render(values={"webhook.replicaCont": 3})
    assert "replicaCont" in str(failure.value)
    assert "/webhook" in str(failure.value)


def test_schema_rejects_a_wrong_type_naming_the_key() -> None:
    with pytest.raises(HelmError) as failure:
        render(values={"webhook.replicaCount": "three"})
    assert "/webhook/replicaCount" in str(failure.value)
    assert "want integer" in str(failure.value)


def test_schema_rejects_an_unknown_top_level_key() -> None:
    with pytest.raises(HelmError, match="webhok"):
        render(values={"webhok": {"enabled": False}})


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("webhook.failurePolicy", "Explode"),
        ("webhook.strategy", "copy"),
        ("webhook.tls.mode", "manual"),
        ("labeler.mode", "cronjob"),
        ("webhook.timeoutSeconds", 31),
        ("roleLabels.frontend.key", "not a label"),
        ("devicePlugin.deviceCount", 0),
        ("backend.runAsUser", 0),
        ("webhook.listenHost", "localhost"),
        ("devicePlugin.readinessProbe.periodSeconds", 0),
        ("controller.policy", "fastest"),
        ("controller.onBackendLoss", "delete"),
        ("controller.replicaCount", 0),
        ("controller.maxPodsPerBackend", -1),
        ("webhook.preStopSleepSeconds", -1),
        ("webhook.frontendThreads", 0),
        ("webhook.frontendThreads", 513),  # the services refuse more: keep the chart in step
        ("webhook.frontendThreads", "32"),
        ("backend.service.name", "a-backend-service-name-that-leaves-no-room-for-headless"),
        ("networkPolicy.metricsNamespaceSelector", {"namespaces": ["monitoring"]}),
    ],
)
def test_schema_rejects_out_of_range_values(path: str, value: Any) -> None:
    with pytest.raises(HelmError, match="values don't meet the specifications"):
        render(values={path: value})
