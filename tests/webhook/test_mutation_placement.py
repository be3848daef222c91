"""Placement in the pure mutation: a pod is gated for the placement controller
(``placement=controller``) or pinned to a backend address (``placement=dns``), whatever its
strategy (the sed strategy's own tests are in test_mutation_sed.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from gvirtus_kai_common.gvirtus import (
    BACKEND_ANNOTATION,
    BACKEND_GATE,
    PROPERTIES_ANNOTATION,
    THREADS_ANNOTATION,
    frontend_config,
)
from gvirtus_kai_webhook.mutation import (
    CONFIG_ENV,
    PROPERTIES_VOLUME,
    MutationDenied,
    mutate_pod,
    needs_backend_address,
    pinned_address,
)
from gvirtus_kai_webhook.settings import Settings

from .pods import (
    BACKEND_IP,
    POD_REVIEWS,
    apply,
    assert_valid_pod,
    container,
    env_of,
    patch_document,
    pod,
)

GATED = Settings(placement="controller")
PINNED = Settings(placement="dns")
CONFIG_FILE = "/usr/local/gvirtus/etc/properties.json"
COPIED = {BACKEND_ANNOTATION: "10.244.7.7:9999", PROPERTIES_ANNOTATION: '{"communicator":[]}'}


def gated(obj: dict[str, Any]) -> dict[str, Any]:
    return apply(obj, mutate_pod(obj, GATED, None))


def pinned(obj: dict[str, Any], ip: str = BACKEND_IP) -> dict[str, Any]:
    return apply(obj, mutate_pod(obj, PINNED, ip))


def gate_names(obj: dict[str, Any]) -> list[str]:
    return [gate["name"] for gate in obj["spec"].get("schedulingGates") or []]


def with_gates(obj: dict[str, Any], *names: str) -> dict[str, Any]:
    obj["spec"]["schedulingGates"] = [{"name": name} for name in names]
    return obj


def with_annotations(obj: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    obj["metadata"].setdefault("annotations", {}).update(annotations)
    return obj


def fixture_pod(name: str) -> dict[str, Any]:
    """A fixture pod with the strategy annotation removed: the settings decide the path."""
    obj = pod(name)
    (obj["metadata"].get("annotations") or {}).pop("gvirtus.io/strategy", None)
    return obj


# --- which pods need an address ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("placement", "strategy", "annotation", "needed"),
    [
        ("controller", "mount", None, False),
        ("controller", "mount", "sed", False),
        ("controller", "sed", None, False),
        ("controller", "sed", "mount", False),
        ("dns", "mount", None, True),
        ("dns", "mount", "sed", True),
        ("dns", "sed", "mount", True),
        ("controller", "mount", "rsync", False),  # denied by the mutation, no lookup first
        ("dns", "mount", "rsync", False),
    ],
)
def test_only_pinned_pods_need_a_backend_address(
    placement: str, strategy: str, annotation: str | None, needed: bool
) -> None:
    obj = pod()
    if annotation is not None:
        with_annotations(obj, {"gvirtus.io/strategy": annotation})
    settings = Settings(placement=placement, strategy=strategy)
    assert needs_backend_address(obj, settings) is needed


def test_the_default_placement_is_the_controller() -> None:
    assert Settings().placement == "controller"
    assert not needs_backend_address(pod(), Settings())


# --- gated: placement=controller, mount strategy ---------------------------------------------


@pytest.mark.parametrize("name", POD_REVIEWS)
def test_a_gated_fixture_is_a_valid_pod_and_idempotent(name: str) -> None:
    after = gated(fixture_pod(name))
    assert_valid_pod(after)
    assert gate_names(after) == [BACKEND_GATE]
    assert mutate_pod(after, GATED, None).patch == []


def test_the_gate_is_added_with_no_address() -> None:
    after = gated(pod())
    annotations = after["metadata"].get("annotations") or {}
    assert gate_names(after) == [BACKEND_GATE]
    assert BACKEND_ANNOTATION not in annotations
    assert PROPERTIES_ANNOTATION not in annotations


def test_a_gated_pod_gets_the_volume_mount_and_env_that_project_the_controllers_annotation() -> (
    None
):
    after = gated(pod())
    volumes = {v["name"]: v for v in after["spec"]["volumes"]}
    [item] = volumes[PROPERTIES_VOLUME]["downwardAPI"]["items"]
    assert item["fieldRef"]["fieldPath"] == f"metadata.annotations['{PROPERTIES_ANNOTATION}']"
    trainer = container(after, "trainer")
    assert {
        "name": PROPERTIES_VOLUME,
        "mountPath": CONFIG_FILE,
        "subPath": "properties.json",
        "readOnly": True,
    } in trainer["volumeMounts"]
    assert env_of(trainer)[CONFIG_ENV] == CONFIG_FILE
    assert after["spec"]["nodeSelector"]["gvirtus.io/frontend.allowed"] == "true"


def test_the_gate_is_appended_to_the_pods_own_gates() -> None:
    obj = with_gates(pod(), "example.com/quota")
    patch = patch_document(mutate_pod(obj, GATED, None))
    assert {"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": BACKEND_GATE}} in (
        patch
    )
    assert gate_names(gated(obj)) == ["example.com/quota", BACKEND_GATE]


def test_a_pod_without_gates_gets_the_list_whole() -> None:
    patch = patch_document(mutate_pod(pod(), GATED, None))
    assert {"op": "add", "path": "/spec/schedulingGates", "value": [{"name": BACKEND_GATE}]} in (
        patch
    )


def test_an_empty_or_null_gate_list_is_filled() -> None:
    empties: list[list[Any] | None] = [[], None]
    for empty in empties:
        obj = pod()
        obj["spec"]["schedulingGates"] = empty
        assert gate_names(gated(obj)) == [BACKEND_GATE]


def test_the_gate_is_never_duplicated() -> None:
    obj = with_gates(pod(), BACKEND_GATE, "example.com/quota", BACKEND_GATE)
    after = gated(obj)
    assert gate_names(after) == [BACKEND_GATE, "example.com/quota"]
    assert_valid_pod(after)


def test_a_copied_address_is_dropped_and_the_pod_still_gated() -> None:
    # A copy of an assigned pod: the controller gives it a backend of its own.
    obj = with_annotations(pod(), {**COPIED, "team": "vision"})
    after = gated(obj)
    assert gate_names(after) == [BACKEND_GATE]
    assert after["metadata"]["annotations"] == {"team": "vision"}
    assert mutate_pod(after, GATED, None).patch == []


def test_an_address_given_for_a_gated_pod_is_ignored() -> None:
    assert mutate_pod(pod(), GATED, BACKEND_IP).patch == mutate_pod(pod(), GATED, None).patch


def test_the_controllers_assignment_is_what_the_container_reads() -> None:
    # What the controller's one PATCH does: the annotations written, the gate removed. The pod
    # then needs nothing more from the webhook, and the volume projects the controller's JSON.
    after = gated(pod())
    properties = json.dumps(frontend_config("10.244.3.17", 9999, GATED.plugins))
    after["metadata"].setdefault("annotations", {}).update(
        {BACKEND_ANNOTATION: "10.244.3.17:9999", PROPERTIES_ANNOTATION: properties}
    )
    after["spec"]["schedulingGates"] = []
    assert_valid_pod(after)
    [volume] = [v for v in after["spec"]["volumes"] if v["name"] == PROPERTIES_VOLUME]
    path = volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
    assert path == f"metadata.annotations['{PROPERTIES_ANNOTATION}']"


# --- pinned: placement=dns -----------------------------------------------------------------------


@pytest.mark.parametrize("name", POD_REVIEWS)
def test_a_pinned_fixture_is_a_valid_pod_and_idempotent(name: str) -> None:
    obj = pod(name)
    for item in obj["spec"]["containers"]:
        item.setdefault("command", ["/entrypoint"])  # sed needs one; mount ignores it
    after = pinned(obj)
    assert_valid_pod(after)
    assert mutate_pod(after, PINNED, BACKEND_IP).patch == []


def test_a_pinned_pod_names_its_backend_pod_and_container_port() -> None:
    after = pinned(pod())
    annotations = after["metadata"]["annotations"]
    assert annotations[BACKEND_ANNOTATION] == f"{BACKEND_IP}:9999"
    endpoint = json.loads(annotations[PROPERTIES_ANNOTATION])["communicator"][0]["endpoint"]
    assert (endpoint["server_address"], endpoint["port"]) == (BACKEND_IP, "9999")
    assert "schedulingGates" not in after["spec"]


def test_a_pinned_pod_gets_one_communicator_entry_per_thread_of_the_setting() -> None:
    settings = Settings(placement="dns", frontend_threads=6)
    after = apply(pod(), mutate_pod(pod(), settings, BACKEND_IP))
    properties = after["metadata"]["annotations"][PROPERTIES_ANNOTATION]
    assert json.loads(properties) == frontend_config(BACKEND_IP, 9999, settings.plugins, 6)


def test_the_threads_annotation_overrides_the_setting() -> None:
    obj = with_annotations(pod(), {THREADS_ANNOTATION: "2"})
    properties = pinned(obj)["metadata"]["annotations"][PROPERTIES_ANNOTATION]
    assert len(json.loads(properties)["communicator"]) == 2


@pytest.mark.parametrize("settings", [GATED, PINNED], ids=["controller", "dns"])
@pytest.mark.parametrize("value", ["0", "513", "lots", "-3"])
def test_a_bad_threads_annotation_is_denied_saying_what_fits(
    settings: Settings, value: str
) -> None:
    obj = with_annotations(pod(), {THREADS_ANNOTATION: value})
    with pytest.raises(MutationDenied) as denied:
        mutate_pod(obj, settings, BACKEND_IP)
    assert f"{THREADS_ANNOTATION}={value!r} must be a whole number from 1 to 512" in str(
        denied.value
    )


def test_the_backend_port_setting_is_the_port_written() -> None:
    settings = Settings(placement="dns", backend_port=40000)
    after = apply(pod(), mutate_pod(pod(), settings, BACKEND_IP))
    assert after["metadata"]["annotations"][BACKEND_ANNOTATION] == f"{BACKEND_IP}:40000"


def test_a_pinned_pod_loses_a_copied_gate_and_keeps_other_gates() -> None:
    # A copy of a waiting pod, admitted where nothing would ever remove the gate.
    obj = with_gates(pod(), "example.com/quota", BACKEND_GATE)
    after = pinned(obj)
    assert gate_names(after) == ["example.com/quota"]
    assert mutate_pod(after, PINNED, BACKEND_IP).patch == []


def test_a_copied_address_is_replaced_by_the_pinned_one() -> None:
    after = pinned(with_annotations(pod(), COPIED))
    assert after["metadata"]["annotations"][BACKEND_ANNOTATION] == f"{BACKEND_IP}:9999"
    properties = json.loads(after["metadata"]["annotations"][PROPERTIES_ANNOTATION])
    assert properties["communicator"][0]["endpoint"]["server_address"] == BACKEND_IP


def test_a_gated_pod_switched_to_dns_placement_is_pinned_and_released() -> None:
    after = pinned(gated(pod()))
    assert gate_names(after) == []
    assert after["metadata"]["annotations"][BACKEND_ANNOTATION] == f"{BACKEND_IP}:9999"
    assert_valid_pod(after)


def test_a_wrong_typed_gate_list_is_denied_naming_it() -> None:
    obj = pod()
    obj["spec"]["schedulingGates"] = "gvirtus.io/backend"
    with pytest.raises(MutationDenied, match=r"spec\.schedulingGates"):
        mutate_pod(obj, GATED, None)


# --- the address a pod already names ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("10.244.3.17:9999", "10.244.3.17"),
        ("10.244.3.17:34567", None),  # another port: not our pinning
        ("[fd00::10]:9999", None),
        ("fd00::10:9999", None),
        ("gvirtus-backend:9999", None),
        ("10.244.3.17", None),
        ("", None),
    ],
)
def test_the_pinned_address_is_read_from_the_backend_annotation(
    value: str, address: str | None
) -> None:
    assert pinned_address(with_annotations(pod(), {BACKEND_ANNOTATION: value}), PINNED) == address


def test_a_pod_without_annotations_names_no_address() -> None:
    assert pinned_address(pod(), PINNED) is None
    assert pinned_address({}, PINNED) is None
