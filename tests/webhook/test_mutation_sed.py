"""The sed strategy: the original GVirtuS-KAI behaviour of rewriting properties.json at start-up.

The wrapper is run for real with /bin/sh and sed against a properties.json on disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gvirtus_kai_common.gvirtus import BACKEND_ANNOTATION, PROPERTIES_ANNOTATION
from gvirtus_kai_webhook.mutation import (
    CONFIG_ENV,
    PROPERTIES_VOLUME,
    SED_MARKER,
    MutationDenied,
    is_sed_wrapped,
    mutate_pod,
    needs_backend_address,
)
from gvirtus_kai_webhook.settings import Settings

from .pods import BACKEND_IP, apply, assert_valid_pod, container, env_of, patch_document, pod

SED = Settings(strategy="sed")
MOUNT = (
    Settings()
)  # placement=controller: sed pods (the JOB fixture is one) are pinned all the same
JOB = "pod-sed-job-v1.json"  # annotated gvirtus.io/strategy: sed, gvirtus.io/home: /opt/gvirtus

# A properties.json as shipped in a GVirtuS frontend image, pointing at a placeholder backend.
SHIPPED_PROPERTIES = """{
  "communicator": [
    {
      "endpoint": {
        "suite": "tcp/ip",
        "protocol": "tcp",
        "server_address": "127.0.0.1",
        "port": "34567"
      },
      "plugins": ["cudart", "cublas"]
    }
  ],
  "secure_application": false
}
"""


def wrapped(home: Path, ip: str = BACKEND_IP) -> dict[str, Any]:
    obj = pod(JOB)
    obj["metadata"]["annotations"]["gvirtus.io/home"] = str(home)
    return container(apply(obj, mutate_pod(obj, MOUNT, ip)), "finetune")


def run_container(item: dict[str, Any], program: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the container's argv (command then args) with the original program swapped in."""
    command = list(item["command"])
    assert command[4:] == ["python3", "train.py"]
    command[4:] = program
    return subprocess.run(
        [*command, *item.get("args", [])], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "properties.json").write_text(SHIPPED_PROPERTIES)
    return tmp_path


ECHO_ARGS = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]


def test_sed_wraps_the_command_and_leaves_args_alone() -> None:
    obj = pod(JOB)
    item = container(apply(obj, mutate_pod(obj, MOUNT, BACKEND_IP)), "finetune")
    assert item["command"][:2] == ["/bin/sh", "-c"]
    assert item["command"][2].startswith(SED_MARKER)
    assert item["command"][3:] == ["--", "python3", "train.py"]
    assert item["args"] == container(obj, "finetune")["args"]


def test_sed_wrapper_rewrites_address_and_port_and_keeps_the_rest(home: Path) -> None:
    result = run_container(wrapped(home), ECHO_ARGS)
    assert result.returncode == 0, result.stderr
    config = json.loads((home / "etc" / "properties.json").read_text())
    endpoint = config["communicator"][0]["endpoint"]
    assert endpoint == {
        "suite": "tcp/ip",
        "protocol": "tcp",
        "server_address": BACKEND_IP,
        "port": str(MOUNT.backend_port),
    }
    assert config["communicator"][0]["plugins"] == ["cudart", "cublas"]


def test_sed_wrapper_passes_args_with_quotes_and_spaces_through_verbatim(home: Path) -> None:
    result = run_container(wrapped(home), ECHO_ARGS)
    assert json.loads(result.stdout) == ["--data", "/data/it's here", "--lr", "3e-5"]


def test_sed_wrapper_execs_so_the_exit_code_is_the_programs(home: Path) -> None:
    result = run_container(wrapped(home), [sys.executable, "-c", "raise SystemExit(7)"])
    assert result.returncode == 7


def test_sed_wrapper_fails_the_container_when_the_config_is_missing(tmp_path: Path) -> None:
    result = run_container(wrapped(tmp_path / "absent"), ECHO_ARGS)
    assert result.returncode != 0
    assert result.stdout == ""  # the program never ran against an unconfigured frontend


def test_sed_wrapper_rewrites_a_bare_number_port(home: Path) -> None:
    config_file = home / "etc" / "properties.json"
    config_file.write_text(SHIPPED_PROPERTIES.replace('"port": "34567"', '"port": 34567'))
    run_container(wrapped(home), ECHO_ARGS)
    assert json.loads(config_file.read_text())["communicator"][0]["endpoint"]["port"] == "9999"


def test_sed_wrapper_quotes_a_home_with_spaces(tmp_path: Path) -> None:
    spaced = tmp_path / "gvirtus home"
    (spaced / "etc").mkdir(parents=True)
    (spaced / "etc" / "properties.json").write_text(SHIPPED_PROPERTIES)
    result = run_container(wrapped(spaced), ECHO_ARGS)
    assert result.returncode == 0, result.stderr
    assert BACKEND_IP in (spaced / "etc" / "properties.json").read_text()


def test_sed_points_gvirtus_config_at_the_edited_file() -> None:
    obj = pod(JOB)
    item = container(apply(obj, mutate_pod(obj, MOUNT, BACKEND_IP)), "finetune")
    assert env_of(item)[CONFIG_ENV] == "/opt/gvirtus/etc/properties.json"
    assert env_of(item)["GVIRTUS_LOGLEVEL"] == "20000"


def test_sed_adds_no_volume_and_no_properties_annotation_but_names_its_backend() -> None:
    obj = pod(JOB)
    after = apply(obj, mutate_pod(obj, MOUNT, BACKEND_IP))
    assert after["spec"]["volumes"] == obj["spec"]["volumes"]
    assert PROPERTIES_ANNOTATION not in after["metadata"]["annotations"]
    assert after["metadata"]["annotations"][BACKEND_ANNOTATION] == f"{BACKEND_IP}:9999"


def test_sed_pods_are_pinned_whatever_the_placement() -> None:
    obj = pod(JOB)
    for placement in ("controller", "dns"):
        settings = Settings(placement=placement)
        assert needs_backend_address(obj, settings)
        after = apply(obj, mutate_pod(obj, settings, BACKEND_IP))
        assert "schedulingGates" not in after["spec"]
        assert BACKEND_IP in container(after, "finetune")["command"][2]


def test_sed_without_an_explicit_command_is_denied_pointing_at_mount() -> None:
    obj = pod()  # the trainer container has args but relies on the image entrypoint
    with pytest.raises(MutationDenied) as denied:
        mutate_pod(obj, SED, BACKEND_IP)
    assert "'trainer' has no explicit command" in str(denied.value)
    assert "gvirtus.io/strategy: mount" in str(denied.value)


def test_a_stale_wrapper_gets_only_its_script_replaced() -> None:
    obj = pod(JOB)
    old = apply(obj, mutate_pod(obj, MOUNT, "10.96.0.10"))
    patch = patch_document(mutate_pod(old, MOUNT, BACKEND_IP))
    assert [(op["op"], op["path"]) for op in patch] == [
        ("replace", "/metadata/annotations/gvirtus.io~1backend"),
        ("replace", "/spec/containers/0/command/2"),
    ]
    assert patch[0]["value"] == f"{BACKEND_IP}:9999"
    assert BACKEND_IP in patch[1]["value"]


def test_a_wrapped_command_is_never_wrapped_twice() -> None:
    obj = pod(JOB)
    once = apply(obj, mutate_pod(obj, MOUNT, "10.96.0.10"))
    twice = apply(once, mutate_pod(once, Settings(backend_port=40000), BACKEND_IP))
    command = container(twice, "finetune")["command"]
    assert command.count("/bin/sh") == 1
    assert command[4:] == ["python3", "train.py"]


def test_a_read_only_root_filesystem_is_warned_about() -> None:
    obj = pod(JOB)
    obj["spec"]["containers"][0]["securityContext"] = {"readOnlyRootFilesystem": True}
    warnings = mutate_pod(obj, MOUNT, BACKEND_IP).warnings
    assert any("read-only root filesystem" in w for w in warnings)


def test_switching_from_sed_to_mount_restores_the_original_command() -> None:
    obj = pod(JOB)
    sed_pod = apply(obj, mutate_pod(obj, MOUNT, BACKEND_IP))
    sed_pod["metadata"]["annotations"]["gvirtus.io/strategy"] = "mount"
    mounted = apply(sed_pod, mutate_pod(sed_pod, MOUNT, BACKEND_IP))
    item = container(mounted, "finetune")
    assert item["command"] == ["python3", "train.py"]
    assert not is_sed_wrapped(item["command"])
    assert_valid_pod(mounted)


def test_switching_from_mount_to_sed_removes_the_mount_volume_and_annotation() -> None:
    obj = pod("pod-stale-mount-v1.json")
    obj["spec"]["containers"][0]["command"] = ["start-notebook.sh"]
    after = apply(obj, mutate_pod(obj, SED, BACKEND_IP))
    assert PROPERTIES_VOLUME not in [v["name"] for v in after["spec"]["volumes"]]
    assert PROPERTIES_VOLUME not in [
        m["name"] for m in after["spec"]["containers"][0]["volumeMounts"]
    ]
    assert PROPERTIES_ANNOTATION not in after["metadata"]["annotations"]
    assert is_sed_wrapped(after["spec"]["containers"][0]["command"])
    assert_valid_pod(after)
    assert mutate_pod(after, SED, BACKEND_IP).patch == []
