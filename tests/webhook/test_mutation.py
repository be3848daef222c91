"""The pod mutation, specified on AdmissionReview objects as the API server sends them.

These tests pin pods by DNS (``placement=dns``); the gated path of ``placement=controller`` and what
is particular to pinning are in test_mutation_placement.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from gvirtus_kai_common.gvirtus import BACKEND_ANNOTATION, PROPERTIES_ANNOTATION, frontend_config
from gvirtus_kai_webhook.mutation import (
    CONFIG_ENV,
    PROPERTIES_VOLUME,
    MutationDenied,
    is_enabled,
    mutate_pod,
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

SETTINGS = Settings(placement="dns")
SED = Settings(strategy="sed", placement="dns")
CONFIG_FILE = "/usr/local/gvirtus/etc/properties.json"


def mutated(obj: dict[str, Any], settings: Settings = SETTINGS, ip: str = BACKEND_IP) -> Any:
    return apply(obj, mutate_pod(obj, settings, ip))


def ops(obj: dict[str, Any], settings: Settings = SETTINGS, ip: str = BACKEND_IP) -> list[Any]:
    return patch_document(mutate_pod(obj, settings, ip))


def fixture_for(name: str, settings: Settings) -> dict[str, Any]:
    """The fixture pod; for sed, containers get the explicit command that strategy needs."""
    obj = pod(name)
    if settings.strategy == "sed":
        for item in obj["spec"]["containers"]:
            item.setdefault("command", ["/entrypoint"])
    return obj


def annotated(name: str, **annotations: str) -> dict[str, Any]:
    obj = pod(name)
    obj["metadata"].setdefault("annotations", {}).update(annotations)
    return obj


# --- enable label and frontend config --------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "enabled"),
    [
        ({"labels": {"gvirtus.io/enabled": "true"}}, True),
        ({"labels": {"gvirtus.io/enabled": "false"}}, False),
        ({"labels": {"gvirtus.io/enabled": "True"}}, False),
        ({"labels": {"app": "x"}}, False),
        ({"labels": None}, False),
        ({}, False),
    ],
)
def test_is_enabled_only_for_label_value_true(metadata: dict[str, Any], enabled: bool) -> None:
    assert is_enabled({"metadata": metadata}, Settings()) is enabled


def test_is_enabled_follows_the_configured_enable_label() -> None:
    settings = Settings(enable_label="example.com/gvirtus")
    assert is_enabled({"metadata": {"labels": {"example.com/gvirtus": "true"}}}, settings)
    assert not is_enabled({"metadata": {"labels": {"gvirtus.io/enabled": "true"}}}, settings)


def test_backend_address_that_is_not_an_ip_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="must be an IPv4 address"):
        mutate_pod(pod(), SETTINGS, "gvirtus-backend.gvirtus-system")


@pytest.mark.parametrize("settings", [SETTINGS, SED], ids=["mount", "sed"])
def test_an_ipv6_backend_address_is_a_caller_error(settings: Settings) -> None:
    # GVirtuS validates server_address as a dotted quad: an IPv6 address is never written.
    with pytest.raises(ValueError, match="must be an IPv4 address"):
        mutate_pod(fixture_for("pod-gpu-v1.json", settings), settings, "fd00::10")


@pytest.mark.parametrize("settings", [SETTINGS, SED], ids=["mount", "sed"])
def test_a_pinned_pod_without_an_address_is_a_caller_error(settings: Settings) -> None:
    with pytest.raises(ValueError, match="a backend address is needed"):
        mutate_pod(fixture_for("pod-gpu-v1.json", settings), settings, None)


# --- every fixture, both strategies ----------------------------------------------------------


@pytest.mark.parametrize("name", POD_REVIEWS)
@pytest.mark.parametrize("settings", [SETTINGS, SED], ids=["mount", "sed"])
def test_patched_fixture_is_a_valid_pod(name: str, settings: Settings) -> None:
    obj = fixture_for(name, settings)
    assert_valid_pod(mutated(obj, settings))


@pytest.mark.parametrize("name", POD_REVIEWS)
@pytest.mark.parametrize("settings", [SETTINGS, SED], ids=["mount", "sed"])
def test_mutating_the_output_again_yields_an_empty_patch(name: str, settings: Settings) -> None:
    obj = fixture_for(name, settings)
    once = mutated(obj, settings)
    assert mutate_pod(once, settings, BACKEND_IP).patch == []


# --- mount strategy --------------------------------------------------------------------------


def test_mount_annotation_holds_the_frontend_config_as_compact_json() -> None:
    annotation = mutated(pod())["metadata"]["annotations"][PROPERTIES_ANNOTATION]
    assert json.loads(annotation) == frontend_config(
        BACKEND_IP, SETTINGS.backend_port, SETTINGS.plugins
    )
    assert " " not in annotation


def test_mount_volume_projects_the_annotation_as_properties_json() -> None:
    volumes = {v["name"]: v for v in mutated(pod())["spec"]["volumes"]}
    assert volumes[PROPERTIES_VOLUME]["downwardAPI"]["items"] == [
        {
            "path": "properties.json",
            "fieldRef": {
                "apiVersion": "v1",
                "fieldPath": "metadata.annotations['gvirtus.io/properties']",
            },
        }
    ]


def test_mount_target_gets_a_read_only_subpath_mount_and_config_env() -> None:
    trainer = container(mutated(pod()), "trainer")
    assert {
        "name": PROPERTIES_VOLUME,
        "mountPath": CONFIG_FILE,
        "subPath": "properties.json",
        "readOnly": True,
    } in trainer["volumeMounts"]
    assert env_of(trainer)[CONFIG_ENV] == CONFIG_FILE


def test_mount_leaves_the_command_and_args_alone() -> None:
    trainer = container(mutated(pod()), "trainer")
    assert "command" not in trainer
    assert trainer["args"] == ["--epochs", "20"]


def test_gvirtus_home_is_not_set_so_the_image_keeps_its_own() -> None:
    assert "GVIRTUS_HOME" not in env_of(container(mutated(pod()), "trainer"))


def test_lists_that_exist_are_appended_to_never_replaced() -> None:
    obj = pod("pod-multi-container-v1.json")
    paths = {op["path"]: op["op"] for op in ops(obj)}
    assert paths["/spec/volumes/-"] == "add"
    assert paths["/spec/containers/0/volumeMounts/-"] == "add"
    assert paths["/spec/containers/0/env/-"] == "add"
    whole_lists = {"/spec/volumes", "/spec/containers", "/spec/containers/0/env"}
    assert not whole_lists & paths.keys()


def test_existing_entries_survive_in_their_original_order() -> None:
    obj = pod("pod-multi-container-v1.json")
    before = container(obj, "embedder")
    after = container(mutated(obj), "embedder")
    assert after["env"][: len(before["env"])] == before["env"]
    assert after["volumeMounts"][: len(before["volumeMounts"])] == before["volumeMounts"]


def test_absent_annotations_env_and_node_selector_are_added_as_whole_objects() -> None:
    patch = {op["path"]: op["value"] for op in ops(pod("pod-no-gpu-v1.json"))}
    assert set(patch["/metadata/annotations"]) == {PROPERTIES_ANNOTATION, BACKEND_ANNOTATION}
    assert patch["/spec/containers/0/env"] == [{"name": CONFIG_ENV, "value": CONFIG_FILE}]
    assert patch["/spec/nodeSelector"] == {"gvirtus.io/frontend.allowed": "true"}


def test_annotation_key_is_escaped_and_other_annotations_are_kept() -> None:
    obj = pod("pod-multi-container-v1.json")
    paths = [op["path"] for op in ops(obj)]
    assert "/metadata/annotations/gvirtus.io~1properties" in paths
    assert "/metadata/annotations/gvirtus.io~1backend" in paths
    annotations = mutated(obj)["metadata"]["annotations"]
    assert annotations["example.com/owner-team"] == "search/ranking"
    assert annotations["prometheus.io/scrape"] == "true"


def test_node_selector_is_merged_with_the_pods_own() -> None:
    obj = pod("pod-multi-container-v1.json")
    assert mutated(obj)["spec"]["nodeSelector"] == {
        "kubernetes.io/os": "linux",
        "gvirtus.io/frontend.allowed": "true",
    }


def test_node_selector_key_is_escaped_when_added_to_an_existing_selector() -> None:
    paths = [op["path"] for op in ops(pod("pod-multi-container-v1.json"))]
    assert "/spec/nodeSelector/gvirtus.io~1frontend.allowed" in paths


def test_node_selector_for_the_frontend_label_with_another_value_is_denied() -> None:
    obj = pod()
    obj["spec"]["nodeSelector"] = {"gvirtus.io/frontend.allowed": "false"}
    with pytest.raises(MutationDenied, match=r"nodeSelector sets gvirtus.io/frontend.allowed="):
        mutate_pod(obj, SETTINGS, BACKEND_IP)


def test_frontend_label_comes_from_settings() -> None:
    settings = Settings(frontend_label="example.com/gvirtus-frontend=yes")
    assert mutated(pod(), settings)["spec"]["nodeSelector"] == {
        "example.com/gvirtus-frontend": "yes"
    }


# --- which containers ------------------------------------------------------------------------


def test_only_containers_using_the_gpu_are_targets() -> None:
    obj = pod("pod-multi-container-v1.json")
    after = mutated(obj)
    assert CONFIG_ENV in env_of(container(after, "embedder"))
    assert container(after, "metrics") == container(obj, "metrics")
    assert container(after, "fetch-model") == container(obj, "fetch-model")


def test_gpu_resource_name_comes_from_settings() -> None:
    obj = pod("pod-multi-container-v1.json")
    obj["spec"]["containers"][1]["resources"]["limits"]["example.com/vgpu"] = "1"
    after = mutated(obj, Settings(gpu_resource="example.com/vgpu"))
    assert CONFIG_ENV in env_of(container(after, "metrics"))
    assert CONFIG_ENV not in env_of(container(after, "embedder"))


def test_first_container_is_the_target_when_none_uses_the_gpu() -> None:
    obj = pod("pod-multi-container-v1.json")
    for item in obj["spec"]["containers"]:
        item["resources"] = {}
    obj["spec"]["containers"].reverse()
    after = mutated(obj)
    assert CONFIG_ENV in env_of(container(after, "metrics"))
    assert CONFIG_ENV not in env_of(container(after, "embedder"))


def test_gpu_request_without_limit_makes_a_target_but_warns() -> None:
    obj = pod()
    del obj["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    mutation = mutate_pod(obj, SETTINGS, BACKEND_IP)
    assert any(op.path.startswith("/spec/containers/0/env") for op in mutation.patch)
    assert len(mutation.warnings) == 1


def test_a_zero_gpu_limit_does_not_count_as_using_the_gpu() -> None:
    obj = pod()
    obj["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "0"}}
    assert len(mutate_pod(obj, SETTINGS, BACKEND_IP).warnings) == 1


def test_no_gpu_limit_gives_one_warning_naming_the_container_and_the_fix() -> None:
    warnings = mutate_pod(pod("pod-no-gpu-v1.json"), SETTINGS, BACKEND_IP).warnings
    assert len(warnings) == 1
    assert "cuda-smoke" in warnings[0]
    assert "resources.limits" in warnings[0]
    assert "nvidia.com/gpu: 1" in warnings[0]
    assert len(warnings[0]) <= 120  # API server guidance: short warnings, long ones truncated


def test_a_gpu_limit_gives_no_warning() -> None:
    assert mutate_pod(pod(), SETTINGS, BACKEND_IP).warnings == []


def test_containers_annotation_selects_named_containers_including_init_ones() -> None:
    obj = annotated(
        "pod-multi-container-v1.json", **{"gvirtus.io/containers": " fetch-model, metrics "}
    )
    after = mutated(obj)
    assert CONFIG_ENV in env_of(container(after, "fetch-model"))
    assert CONFIG_ENV in env_of(container(after, "metrics"))
    assert CONFIG_ENV not in env_of(container(after, "embedder"))
    assert_valid_pod(after)


def test_init_containers_are_never_targets_unless_named() -> None:
    obj = pod("pod-multi-container-v1.json")
    obj["spec"]["initContainers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    after = mutated(obj)
    assert after["spec"]["initContainers"] == obj["spec"]["initContainers"]


def test_containers_annotation_naming_an_unknown_container_is_denied_with_the_real_names() -> None:
    obj = annotated("pod-multi-container-v1.json", **{"gvirtus.io/containers": "embedder,web"})
    with pytest.raises(MutationDenied) as denied:
        mutate_pod(obj, SETTINGS, BACKEND_IP)
    message = str(denied.value)
    assert "'web'" in message
    assert "embedder, metrics, fetch-model (init)" in message


def test_empty_containers_annotation_is_denied() -> None:
    obj = annotated("pod-gpu-v1.json", **{"gvirtus.io/containers": " , "})
    with pytest.raises(MutationDenied, match=r"gvirtus\.io/containers is empty"):
        mutate_pod(obj, SETTINGS, BACKEND_IP)


def test_a_pod_without_containers_is_denied() -> None:
    obj = pod()
    obj["spec"]["containers"] = []
    with pytest.raises(MutationDenied, match="no containers"):
        mutate_pod(obj, SETTINGS, BACKEND_IP)


# --- annotations that change the delivery ----------------------------------------------------


def test_home_annotation_moves_the_mount_and_the_env() -> None:
    after = mutated(annotated("pod-gpu-v1.json", **{"gvirtus.io/home": "/opt/gvirtus/"}))
    trainer = container(after, "trainer")
    assert env_of(trainer)[CONFIG_ENV] == "/opt/gvirtus/etc/properties.json"
    assert "/opt/gvirtus/etc/properties.json" in [m["mountPath"] for m in trainer["volumeMounts"]]


@pytest.mark.parametrize("home", ["opt/gvirtus", "", "/opt/../etc", "/opt/gvirtus\n"])
def test_home_annotation_that_is_not_a_clean_absolute_path_is_denied(home: str) -> None:
    with pytest.raises(MutationDenied, match=r"gvirtus\.io/home=.* must be an absolute path"):
        mutate_pod(annotated("pod-gpu-v1.json", **{"gvirtus.io/home": home}), SETTINGS, BACKEND_IP)


def test_default_home_comes_from_settings() -> None:
    after = mutated(pod(), Settings(default_gvirtus_home="/opt/gv"))
    assert env_of(container(after, "trainer"))[CONFIG_ENV] == "/opt/gv/etc/properties.json"


def test_unknown_strategy_annotation_is_denied_listing_the_valid_ones() -> None:
    obj = annotated("pod-gpu-v1.json", **{"gvirtus.io/strategy": "env"})
    with pytest.raises(
        MutationDenied, match=r"'env' is not a GVirtuS strategy; valid .*mount, sed"
    ):
        mutate_pod(obj, SETTINGS, BACKEND_IP)


def test_strategy_annotation_overrides_the_default() -> None:
    obj = annotated("pod-multi-container-v1.json", **{"gvirtus.io/strategy": "sed"})
    after = mutated(obj, SETTINGS)
    assert container(after, "embedder")["command"][:2] == ["/bin/sh", "-c"]
    assert PROPERTIES_ANNOTATION not in after["metadata"]["annotations"]


# --- stale and conflicting state -------------------------------------------------------------


def test_stale_address_and_port_replace_only_the_annotations() -> None:
    obj = pod("pod-stale-mount-v1.json")
    obj["metadata"]["annotations"][BACKEND_ANNOTATION] = "10.96.0.10:9999"
    patch = ops(obj)
    assert [(op["op"], op["path"]) for op in patch] == [
        ("replace", "/metadata/annotations/gvirtus.io~1properties"),
        ("replace", "/metadata/annotations/gvirtus.io~1backend"),
    ]
    assert patch[1]["value"] == f"{BACKEND_IP}:{SETTINGS.backend_port}"
    assert json.loads(patch[0]["value"]) == frontend_config(
        BACKEND_IP, SETTINGS.backend_port, SETTINGS.plugins
    )


def test_a_changed_home_replaces_the_mount_and_env_in_place() -> None:
    obj = annotated(
        "pod-stale-mount-v1.json",
        **{"gvirtus.io/home": "/opt/gvirtus", BACKEND_ANNOTATION: f"{BACKEND_IP}:9999"},
    )
    patch = {(op["op"], op["path"]) for op in ops(obj)}
    assert ("replace", "/spec/containers/0/volumeMounts/0") in patch
    assert ("replace", "/spec/containers/0/env/1") in patch
    assert not [path for kind, path in patch if kind == "add"]
    assert_valid_pod(mutated(obj))


def test_a_foreign_config_env_is_replaced_in_place() -> None:
    obj = pod("pod-multi-container-v1.json")
    obj["spec"]["containers"][0]["env"].insert(0, {"name": CONFIG_ENV, "value": "/etc/gv.json"})
    after = mutated(obj)
    env = container(after, "embedder")["env"]
    assert env[0] == {"name": CONFIG_ENV, "value": CONFIG_FILE}
    assert [e["name"] for e in env].count(CONFIG_ENV) == 1


def test_a_config_env_from_a_secret_is_replaced_by_our_value() -> None:
    obj = pod("pod-multi-container-v1.json")
    secret_ref = {"secretKeyRef": {"name": "gv", "key": "config"}}
    obj["spec"]["containers"][0]["env"].append({"name": CONFIG_ENV, "valueFrom": secret_ref})
    after = mutated(obj)
    assert container(after, "embedder")["env"][-1] == {"name": CONFIG_ENV, "value": CONFIG_FILE}


def test_duplicate_config_env_entries_collapse_to_ours() -> None:
    obj = pod("pod-multi-container-v1.json")
    env = obj["spec"]["containers"][0]["env"]
    env[1:1] = [{"name": CONFIG_ENV, "value": "/a"}, {"name": CONFIG_ENV, "value": "/b"}]
    after = mutated(obj)
    configs = [e for e in container(after, "embedder")["env"] if e["name"] == CONFIG_ENV]
    assert configs == [{"name": CONFIG_ENV, "value": CONFIG_FILE}]


def test_a_foreign_mount_at_the_config_path_is_replaced_in_place() -> None:
    obj = pod("pod-multi-container-v1.json")
    obj["spec"]["volumes"].append({"name": "own-config", "configMap": {"name": "gv"}})
    foreign = {"name": "own-config", "mountPath": CONFIG_FILE, "subPath": "p.json"}
    obj["spec"]["containers"][0]["volumeMounts"].insert(1, foreign)
    after = mutated(obj)
    mounts = container(after, "embedder")["volumeMounts"]
    assert mounts[1]["name"] == PROPERTIES_VOLUME
    assert_valid_pod(after)


def test_a_user_volume_with_our_name_is_replaced_not_duplicated() -> None:
    obj = pod()
    obj["spec"]["volumes"].insert(0, {"name": PROPERTIES_VOLUME, "emptyDir": {}})
    after = mutated(obj)
    assert "downwardAPI" in after["spec"]["volumes"][0]
    assert_valid_pod(after)


def test_null_lists_and_maps_are_treated_as_absent() -> None:
    obj = pod("pod-no-gpu-v1.json")
    obj["metadata"]["annotations"] = None
    obj["spec"]["nodeSelector"] = None
    obj["spec"]["containers"][0]["env"] = None
    assert_valid_pod(mutated(obj))


def test_a_pod_without_metadata_gets_the_annotation_under_new_metadata() -> None:
    obj = pod()
    del obj["metadata"]
    patch = {op["path"]: op["value"] for op in ops(obj)}
    assert set(patch["/metadata"]["annotations"]) == {PROPERTIES_ANNOTATION, BACKEND_ANNOTATION}


def test_mutation_does_not_modify_its_input() -> None:
    obj = pod("pod-multi-container-v1.json")
    snapshot = json.dumps(obj, sort_keys=True)
    mutate_pod(obj, SETTINGS, BACKEND_IP)
    mutate_pod(obj, SED, BACKEND_IP)
    assert json.dumps(obj, sort_keys=True) == snapshot


def test_no_two_operations_of_a_patch_share_a_value_object() -> None:
    # Shared objects would come out of the injector as YAML anchors and aliases.
    obj = annotated(
        "pod-multi-container-v1.json", **{"gvirtus.io/containers": "fetch-model,metrics,embedder"}
    )
    patch = mutate_pod(obj, SETTINGS, BACKEND_IP).patch
    values = [getattr(op, "value", None) for op in patch]
    objects = [value for value in values if isinstance(value, dict | list)]
    assert len(objects) >= 3
    assert len({id(value) for value in objects}) == len(objects)


def test_repeated_reviews_give_equal_patches() -> None:
    first = ops(pod("pod-multi-container-v1.json"))
    mutate_pod(
        annotated("pod-multi-container-v1.json", **{"gvirtus.io/home": "/opt/g"}),
        SETTINGS,
        BACKEND_IP,
    )
    assert ops(pod("pod-multi-container-v1.json")) == first
