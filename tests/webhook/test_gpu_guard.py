"""The guard's pure logic: which pods it keeps off virtual-GPU nodes, and the node affinity it
merges into theirs, judged by evaluating node selector terms against node labels as the scheduler
does."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import jsonpatch
import pytest
from gvirtus_kai_webhook.gpu_guard import (
    GuardSkipped,
    NodeRequirement,
    guard_pod,
    parse_node_requirements,
)
from gvirtus_kai_webhook.settings import Settings
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

FRONTEND = "gvirtus.io/frontend.allowed"
GPU_PRESENT = "nvidia.com/gpu.present"
GPU = "nvidia.com/gpu"
ENABLE = "gvirtus.io/enabled"
VIRTUAL = parse_node_requirements(f"{FRONTEND}=true,{GPU_PRESENT}!=true")
REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


def plain_gpu_pod(labels: Mapping[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    container = {"name": "cuda", "image": "app:1", "resources": {"limits": {GPU: "1"}}}
    return {
        "metadata": {"name": "job", "labels": dict(labels or {"app": "job"})},
        "spec": {"containers": [container], **spec},
    }


def guarded(pod: dict[str, Any], virtual: Sequence[NodeRequirement] = VIRTUAL) -> dict[str, Any]:
    patch = guard_pod(pod, enable_label=ENABLE, gpu_resource=GPU, virtual_nodes=virtual)
    document = [op.model_dump() for op in patch]
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(pod), document)
    return result


def patch_of(pod: dict[str, Any]) -> list[Any]:
    return guard_pod(pod, enable_label=ENABLE, gpu_resource=GPU, virtual_nodes=VIRTUAL)


def terms_of(pod: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    affinity = pod["spec"].get("affinity") or {}
    required = (affinity.get("nodeAffinity") or {}).get(REQUIRED)
    return None if required is None else required.get("nodeSelectorTerms")


# --- how the scheduler reads node affinity, restated for the labels-only case ------------------


def expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = expression["key"], expression["operator"]
    values = expression.get("values") or []
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    raise AssertionError(f"operator {operator} is not used here")


def admits(pod: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether the pod's required node affinity lets it onto a node with ``labels``: ORed
    terms of ANDed expressions, no terms at all admitting every node."""
    terms = terms_of(pod)
    if terms is None:  # no required node affinity: every node
        return True
    assert not any(term.get("matchFields") for term in terms), "node names are not modelled"
    # A term without requirements admits no node.
    return any(
        bool(term.get("matchExpressions"))
        and all(expression_matches(e, labels) for e in term["matchExpressions"])
        for term in terms
    )


def is_virtual(labels: Mapping[str, str], virtual: Sequence[NodeRequirement] = VIRTUAL) -> bool:
    return all((labels.get(r.key) == r.value) == r.equals for r in virtual)


# Every combination of the two role labels: absent, "true" or "false".
NODE_LABELS = [
    {key: value for key, value in zip((FRONTEND, GPU_PRESENT), values, strict=True) if value}
    for values in itertools.product(("", "true", "false"), repeat=2)
]


# --- which pods are guarded --------------------------------------------------------------------


def test_a_plain_gpu_pod_is_kept_off_every_virtual_gpu_node_and_off_no_other() -> None:
    pod = guarded(plain_gpu_pod())

    for labels in NODE_LABELS:
        assert admits(pod, labels) == (not is_virtual(labels)), labels


def test_a_plain_gpu_pod_without_affinity_gets_one_term_per_negated_requirement() -> None:
    assert terms_of(guarded(plain_gpu_pod())) == [
        {"matchExpressions": [{"key": FRONTEND, "operator": "NotIn", "values": ["true"]}]},
        {"matchExpressions": [{"key": GPU_PRESENT, "operator": "In", "values": ["true"]}]},
    ]


def test_a_gvirtus_pod_is_left_alone() -> None:
    assert patch_of(plain_gpu_pod({ENABLE: "true"})) == []


def test_a_pod_whose_enable_label_is_not_true_is_no_gvirtus_pod_and_is_guarded() -> None:
    assert terms_of(guarded(plain_gpu_pod({ENABLE: "false"})))


@pytest.mark.parametrize("quantity", [None, "0", 0])
def test_a_pod_that_requests_no_gpu_is_left_alone(quantity: object) -> None:
    pod = plain_gpu_pod()
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    if quantity is None:
        del limits[GPU]
    else:
        limits[GPU] = quantity
    assert patch_of(pod) == []


def test_a_gpu_requested_only_by_an_init_container_is_guarded() -> None:
    pod = plain_gpu_pod()
    pod["spec"]["initContainers"] = pod["spec"].pop("containers")
    pod["spec"]["containers"] = [{"name": "main", "image": "app:1"}]
    assert terms_of(guarded(pod))


def test_a_gpu_in_requests_only_is_guarded() -> None:
    pod = plain_gpu_pod()
    resources = pod["spec"]["containers"][0]["resources"]
    resources["requests"] = resources.pop("limits")
    assert terms_of(guarded(pod))


def test_the_virtual_gpu_nodes_come_from_the_requirements_given() -> None:
    # A device plugin limited to one pool by its node selector: other frontends are not virtual.
    virtual = parse_node_requirements(f"{FRONTEND}=true,{GPU_PRESENT}!=true,pool=cpu")
    pod = guarded(plain_gpu_pod(), virtual)

    for labels in NODE_LABELS:
        for pool in ({}, {"pool": "cpu"}, {"pool": "gpu"}):
            node = {**labels, **pool}
            assert admits(pod, node) == (not is_virtual(node, virtual)), node


# --- merging with the pod's own affinity -------------------------------------------------------


def test_every_term_of_the_pods_own_affinity_is_split_keeping_its_expressions_and_fields() -> None:
    own = [
        {
            "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}],
            "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}],
        },
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
    ]
    pod = plain_gpu_pod(affinity={"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": own}}})

    terms = terms_of(guarded(pod))

    assert terms is not None
    assert len(terms) == len(own) * len(VIRTUAL)
    for term in terms:
        original = next(o for o in own if o["matchExpressions"][0] in term["matchExpressions"])
        assert term.get("matchFields") == original.get("matchFields")
        assert term["matchExpressions"][:-1] == original["matchExpressions"]


def test_the_rest_of_the_affinity_is_kept() -> None:
    preferred = [
        {"weight": 1, "preference": {"matchExpressions": [{"key": "x", "operator": "Exists"}]}}
    ]
    pod_affinity: dict[str, Any] = {"requiredDuringSchedulingIgnoredDuringExecution": []}
    affinity = {
        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred},
        "podAffinity": pod_affinity,
    }
    pod = guarded(plain_gpu_pod(affinity=affinity))

    assert pod["spec"]["affinity"]["podAffinity"] == pod_affinity
    node_affinity = pod["spec"]["affinity"]["nodeAffinity"]
    assert node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] == preferred
    assert node_affinity[REQUIRED]["nodeSelectorTerms"]


def test_a_term_that_already_excludes_virtual_gpu_nodes_is_kept_as_it_is() -> None:
    term = {
        "matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a"]},
            {"key": GPU_PRESENT, "operator": "In", "values": ["true"]},
        ]
    }
    pod = plain_gpu_pod(affinity={"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [term]}}})
    assert patch_of(pod) == []


def test_an_empty_list_of_terms_gets_the_guard_terms() -> None:
    pod = plain_gpu_pod(affinity={"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": []}}})
    assert terms_of(guarded(pod)) == terms_of(guarded(plain_gpu_pod()))


name_is_n1 = {"key": "metadata.name", "operator": "In", "values": ["n1"]}


def test_an_empty_term_admits_no_node_and_stays_empty() -> None:
    own = [{"matchExpressions": []}, {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}]
    pod = plain_gpu_pod(affinity={"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": own}}})

    terms = terms_of(guarded(pod))

    assert terms is not None
    assert terms[0] == {"matchExpressions": []}
    assert len(terms) == 1 + len(VIRTUAL)


@pytest.mark.parametrize(
    "affinity",
    [
        None,
        {},
        {"nodeAffinity": {}},
        {"nodeAffinity": {REQUIRED: {}}},
        {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [{"matchFields": [name_is_n1]}]}}},
    ],
)
def test_the_guard_changes_nothing_in_its_own_output(affinity: dict[str, Any] | None) -> None:
    pod = plain_gpu_pod() if affinity is None else plain_gpu_pod(affinity=affinity)
    once = guarded(pod)
    assert terms_of(once)
    assert patch_of(once) == []


_LABEL_KEYS = (FRONTEND, GPU_PRESENT, "zone")
_expressions = st.builds(
    lambda key, operator, values: (
        {"key": key, "operator": operator, "values": values}
        if operator in ("In", "NotIn")
        else {"key": key, "operator": operator}
    ),
    st.sampled_from(_LABEL_KEYS),
    st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")),
    st.lists(st.sampled_from(("true", "false", "a")), min_size=1, max_size=2, unique=True),
)
_terms = st.lists(
    st.builds(lambda e: {"matchExpressions": e}, st.lists(_expressions, max_size=3)),
    min_size=1,
    max_size=3,
)
_nodes = st.dictionaries(
    st.sampled_from(_LABEL_KEYS), st.sampled_from(("true", "false", "a")), max_size=3
)


@given(terms=_terms, nodes=st.lists(_nodes, min_size=1, max_size=8))
def test_the_merged_affinity_admits_what_the_pods_own_did_minus_virtual_gpu_nodes(
    terms: list[dict[str, Any]], nodes: list[dict[str, str]]
) -> None:
    pod = plain_gpu_pod(affinity={"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": terms}}})
    merged = guarded(pod)

    for labels in nodes:
        assert admits(merged, labels) == (admits(pod, labels) and not is_virtual(labels))
    assert patch_of(merged) == []


# --- input the guard cannot read ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"affinity": "anywhere"}, "spec.affinity"),
        (
            {"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": "x"}}}},
            "nodeSelectorTerms",
        ),
        ({"containers": ["cuda"]}, "spec.containers.0"),
    ],
)
def test_a_wrong_typed_field_is_skipped_naming_the_field(spec: dict[str, Any], field: str) -> None:
    pod = plain_gpu_pod()
    pod["spec"].update(spec)
    with pytest.raises(GuardSkipped, match=field.replace(".", r"\.")):
        patch_of(pod)


# --- the setting that names the virtual-GPU nodes ----------------------------------------------


def test_requirements_parse_from_label_selector_syntax() -> None:
    assert parse_node_requirements(" a.io/x=true , b!=1,c= ") == (
        NodeRequirement("a.io/x", "true", equals=True),
        NodeRequirement("b", "1", equals=False),
        NodeRequirement("c", "", equals=True),
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "at least one"),
        (" , ", "at least one"),
        ("frontend", "neither key=value nor key!=value"),
        ("Bad_Prefix/x=true", "prefix"),
        ("x=not valid", "value"),
    ],
)
def test_a_bad_requirement_is_refused_naming_it(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_node_requirements(text)


def test_the_webhook_settings_refuse_a_bad_list_of_virtual_gpu_node_labels() -> None:
    with pytest.raises(ValidationError, match="neither key=value nor key!=value"):
        Settings(virtual_gpu_nodes="gvirtus.io/frontend.allowed")
    assert Settings(virtual_gpu_nodes="a=b").virtual_gpu_requirements == (
        NodeRequirement("a", "b", equals=True),
    )


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
_affinity_levels = ("nodeAffinity", REQUIRED, "nodeSelectorTerms")


@given(
    depth=st.integers(min_value=0, max_value=len(_affinity_levels)),
    value=_json,
    gpu_in_init=st.booleans(),
)
def test_any_affinity_is_either_skipped_or_patched_into_a_pod_the_guard_then_leaves_alone(
    depth: int, value: object, gpu_in_init: bool
) -> None:
    # Whatever JSON sits at any level of the affinity, the guard names a bad field or returns a
    # patch that applies and whose result it does not change again.
    affinity: Any = value
    for key in reversed(_affinity_levels[:depth]):
        affinity = {key: affinity}
    pod = plain_gpu_pod(affinity=affinity)
    if gpu_in_init:
        pod["spec"]["initContainers"] = pod["spec"]["containers"]
        pod["spec"]["containers"] = [{"name": "main", "image": "app:1"}]
    try:
        once = guarded(pod)
    except GuardSkipped:
        return
    assert admits(once, {"gvirtus.io/frontend.allowed": "true"}) is False
    assert patch_of(once) == []
