"""The sed strategy: a wrapper that writes properties.json at start-up, then runs the command.

The wrapper is run for real with /bin/sh against a properties.json on disk, with the backend
address in the environment variable the kubelet fills from the pod's annotation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gvirtus_kai_common.gvirtus import (
    BACKEND_ANNOTATION,
    BACKEND_GATE,
    DEFAULT_THREADS,
    PROPERTIES_ANNOTATION,
    properties_json,
)
from gvirtus_kai_webhook.mutation import (
    BACKEND_ENV,
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

GATED = Settings()  # placement=controller, the chart's default
PINNED = Settings(placement="dns")
SED = Settings(strategy="sed")
JOB = "pod-sed-job-v1.json"  # annotated gvirtus.io/strategy: sed, gvirtus.io/home: /opt/gvirtus
BACKEND = f"{BACKEND_IP}:9999"
DOWNWARD_BACKEND = {
    "name": BACKEND_ENV,
    "valueFrom": {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.annotations['gvirtus.io/backend']"}
    },
}

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


def job(home: Path | str = "/opt/gvirtus", annotations: dict[str, str] | None = None) -> Any:
    obj = pod(JOB)
    obj["metadata"]["annotations"].update({"gvirtus.io/home": str(home), **(annotations or {})})
    return obj


def wrapped(
    home: Path, settings: Settings = GATED, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    obj = job(home, annotations)
    address = BACKEND_IP if settings.placement == "dns" else None
    return container(apply(obj, mutate_pod(obj, settings, address)), "finetune")


def run_container(
    item: dict[str, Any], program: list[str], backend: str = BACKEND, user: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the container's argv (command then args) with the original program swapped in, and
    the backend variable as the kubelet resolves it (an absent annotation gives "")."""
    command = list(item["command"])
    assert command[4:] == ["python3", "train.py"]
    command[4:] = program
    env = {"PATH": os.environ["PATH"], BACKEND_ENV: backend}
    return subprocess.run(
        [*command, *item.get("args", [])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        user=user,
    )


def config_of(home: Path) -> str:
    return (home / "etc" / "properties.json").read_text()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "properties.json").write_text(SHIPPED_PROPERTIES)
    return tmp_path


ECHO_ARGS = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]
PLUGINS = list(GATED.plugins)


# --- placement ---------------------------------------------------------------------------------


def test_with_the_controller_a_sed_pod_is_gated_and_needs_no_lookup() -> None:
    obj = job()
    assert not needs_backend_address(obj, GATED)
    after = apply(obj, mutate_pod(obj, GATED, None))
    assert [gate["name"] for gate in after["spec"]["schedulingGates"]] == [BACKEND_GATE]
    assert BACKEND_ANNOTATION not in after["metadata"]["annotations"]
    assert_valid_pod(after)


def test_a_gated_sed_pod_drops_an_address_copied_from_another_pod() -> None:
    obj = job(annotations={BACKEND_ANNOTATION: "10.244.7.7:9999"})
    after = apply(obj, mutate_pod(obj, GATED, None))
    assert BACKEND_ANNOTATION not in after["metadata"]["annotations"]


def test_without_the_controller_a_sed_pod_is_pinned_by_dns() -> None:
    obj = job()
    assert needs_backend_address(obj, PINNED)
    after = apply(obj, mutate_pod(obj, PINNED, BACKEND_IP))
    assert "schedulingGates" not in after["spec"]
    assert after["metadata"]["annotations"][BACKEND_ANNOTATION] == BACKEND


@pytest.mark.parametrize("settings", [GATED, PINNED], ids=["controller", "dns"])
def test_the_wrapper_reads_the_pinned_address_from_the_downward_api(settings: Settings) -> None:
    # The kubelet resolves it at container start: after the controller's patch.
    item = wrapped(Path("/opt/gvirtus"), settings)
    assert DOWNWARD_BACKEND in item["env"]
    assert BACKEND_IP not in item["command"][2]


@pytest.mark.parametrize("settings", [GATED, PINNED], ids=["controller", "dns"])
def test_a_sed_pod_is_idempotent(settings: Settings) -> None:
    obj = job()
    address = BACKEND_IP if settings.placement == "dns" else None
    after = apply(obj, mutate_pod(obj, settings, address))
    assert_valid_pod(after)
    assert mutate_pod(after, settings, address).patch == []


def test_a_pod_with_no_env_gets_both_variables() -> None:
    obj = job()
    del obj["spec"]["containers"][0]["env"]
    after = apply(obj, mutate_pod(obj, GATED, None))
    assert container(after, "finetune")["env"] == [
        {"name": CONFIG_ENV, "value": "/opt/gvirtus/etc/properties.json"},
        DOWNWARD_BACKEND,
    ]
    assert mutate_pod(after, GATED, None).patch == []


# --- the wrapper ---------------------------------------------------------------------------------


def test_sed_wraps_the_command_and_leaves_args_alone() -> None:
    obj = job()
    item = container(apply(obj, mutate_pod(obj, GATED, None)), "finetune")
    assert item["command"][:2] == ["/bin/sh", "-c"]
    assert item["command"][2].startswith(SED_MARKER)
    assert item["command"][3:] == ["--", "python3", "train.py"]
    assert item["args"] == container(pod(JOB), "finetune")["args"]


def test_the_wrapper_writes_one_entry_per_thread_for_the_pinned_backend(home: Path) -> None:
    result = run_container(wrapped(home), ECHO_ARGS)
    assert result.returncode == 0, result.stderr
    # Byte for byte what a mount-strategy pod of the same backend reads.
    assert config_of(home) == properties_json(BACKEND_IP, 9999, PLUGINS, DEFAULT_THREADS)
    entries = json.loads(config_of(home))["communicator"]
    assert len(entries) == DEFAULT_THREADS
    assert {e["endpoint"]["server_address"] for e in entries} == {BACKEND_IP}


def test_the_threads_annotation_sets_the_number_of_entries(home: Path) -> None:
    run_container(wrapped(home, annotations={"gvirtus.io/threads": "3"}), ECHO_ARGS)
    assert config_of(home) == properties_json(BACKEND_IP, 9999, PLUGINS, 3)


def test_the_threads_setting_sets_the_default_number_of_entries(home: Path) -> None:
    run_container(wrapped(home, Settings(frontend_threads=5)), ECHO_ARGS)
    assert len(json.loads(config_of(home))["communicator"]) == 5


def test_the_wrapper_uses_the_address_and_port_it_is_given(home: Path) -> None:
    result = run_container(wrapped(home), ECHO_ARGS, backend="192.168.255.0:40000")
    assert result.returncode == 0, result.stderr
    assert config_of(home) == properties_json("192.168.255.0", "40000", PLUGINS, DEFAULT_THREADS)


@pytest.mark.parametrize(
    "shipped",
    [
        SHIPPED_PROPERTIES.replace(": ", ":\t"),
        SHIPPED_PROPERTIES.replace('"server_address": ', '"server_address":\n          '),
        SHIPPED_PROPERTIES.replace('"port": "34567"', '"port": 34567'),
        '{"communicator":[{"endpoint":{"suite":"tcp/ip","protocol":"tcp",'
        '"server_address":"127.0.0.1","port":"1"}}]}',
    ],
    ids=["tab-after-colon", "value-on-next-line", "number-port", "compact"],
)
def test_a_shipped_config_of_any_layout_is_replaced_whole(home: Path, shipped: str) -> None:
    (home / "etc" / "properties.json").write_text(shipped)
    result = run_container(wrapped(home), ECHO_ARGS)
    assert result.returncode == 0, result.stderr
    assert config_of(home) == properties_json(BACKEND_IP, 9999, PLUGINS, DEFAULT_THREADS)


def test_sed_wrapper_passes_args_with_quotes_and_spaces_through_verbatim(home: Path) -> None:
    result = run_container(wrapped(home), ECHO_ARGS)
    assert json.loads(result.stdout) == ["--data", "/data/it's here", "--lr", "3e-5"]


def test_sed_wrapper_execs_so_the_exit_code_is_the_programs(home: Path) -> None:
    result = run_container(wrapped(home), [sys.executable, "-c", "raise SystemExit(7)"])
    assert result.returncode == 7


def test_sed_wrapper_quotes_a_home_with_spaces(tmp_path: Path) -> None:
    spaced = tmp_path / "gvirtus home"
    (spaced / "etc").mkdir(parents=True)
    (spaced / "etc" / "properties.json").write_text(SHIPPED_PROPERTIES)
    result = run_container(wrapped(spaced), ECHO_ARGS)
    assert result.returncode == 0, result.stderr
    assert BACKEND_IP in config_of(spaced)


@pytest.mark.parametrize(
    ("backend", "says"),
    [
        ("", "no GVirtuS backend pinned yet"),
        ("gvirtus-backend.gvirtus-system:9999", "is not an IPv4 address and port"),
        ("[fd00::7]:9999", "is not an IPv4 address and port"),
        ("fd00::7", "is not an IPv4 address and port"),
        ("10.96.0.42", "is not an IPv4 address and port"),
        ("10.96.0.256:9999", "is not an IPv4 address and port"),
        ("10.96.0:9999", "is not an IPv4 address and port"),
        ("10.96.0.42.1:9999", "is not an IPv4 address and port"),
        ("10.96..42:9999", "is not an IPv4 address and port"),
        ("10.96.0.42:", "is not an IPv4 address and port"),
        ("10.96.0.42:99999", "is not an IPv4 address and port"),
        ("10.96.0.42:0", "is not an IPv4 address and port"),
        ("10.96.0.42:9x", "is not an IPv4 address and port"),
        ('10.96.0.42:9999","x":"', "is not an IPv4 address and port"),
    ],
)
def test_the_wrapper_refuses_anything_but_an_ipv4_address_and_port(
    home: Path, backend: str, says: str
) -> None:
    # GVirtuS exits on a host name or IPv6 (then crashes, losing the log line): never written.
    result = run_container(wrapped(home), ECHO_ARGS, backend=backend)
    assert result.returncode == 1
    assert says in result.stderr
    assert "the program was not started" in result.stderr
    assert result.stdout == ""
    assert config_of(home) == SHIPPED_PROPERTIES


def test_the_wrapper_fails_loudly_when_the_config_is_missing(tmp_path: Path) -> None:
    result = run_container(wrapped(tmp_path / "absent"), ECHO_ARGS)
    assert result.returncode == 1
    assert "properties.json not found" in result.stderr
    assert "the program was not started" in result.stderr
    assert result.stdout == ""  # the program never ran against an unconfigured frontend


@pytest.fixture
def unwritable_home() -> Iterator[Path]:
    """A home whose properties.json only root may write, for a program run as nobody."""
    root = Path(tempfile.mkdtemp())
    try:
        root.chmod(0o755)
        (root / "etc").mkdir(mode=0o755)
        config = root / "etc" / "properties.json"
        config.write_text(SHIPPED_PROPERTIES)
        config.chmod(0o444)
        yield root
    finally:
        shutil.rmtree(root)


def test_the_wrapper_fails_loudly_when_it_cannot_write_the_config(unwritable_home: Path) -> None:
    user = 65534 if os.geteuid() == 0 else None  # root writes whatever the mode
    result = run_container(wrapped(unwritable_home), ECHO_ARGS, user=user)
    assert result.returncode == 1
    assert "cannot write" in result.stderr
    assert "gvirtus.io/strategy: mount" in result.stderr
    assert result.stdout == ""
    assert config_of(unwritable_home) == SHIPPED_PROPERTIES


# --- the rest of the mutation ------------------------------------------------------------------


def test_sed_points_gvirtus_config_at_the_written_file() -> None:
    item = wrapped(Path("/opt/gvirtus"))
    assert env_of(item)[CONFIG_ENV] == "/opt/gvirtus/etc/properties.json"
    assert env_of(item)["GVIRTUS_LOGLEVEL"] == "20000"


def test_sed_adds_no_volume_and_no_properties_annotation() -> None:
    obj = job()
    after = apply(obj, mutate_pod(obj, PINNED, BACKEND_IP))
    assert after["spec"]["volumes"] == obj["spec"]["volumes"]
    assert PROPERTIES_ANNOTATION not in after["metadata"]["annotations"]


def test_a_bad_threads_annotation_is_denied() -> None:
    obj = job(annotations={"gvirtus.io/threads": "0"})
    with pytest.raises(MutationDenied, match="must be a whole number from 1 to 512"):
        mutate_pod(obj, GATED, None)


def test_sed_without_an_explicit_command_is_denied_pointing_at_mount() -> None:
    obj = pod()  # the trainer container has args but relies on the image entrypoint
    with pytest.raises(MutationDenied) as denied:
        mutate_pod(obj, SED, None)
    assert "'trainer' has no explicit command" in str(denied.value)
    assert "gvirtus.io/strategy: mount" in str(denied.value)


def test_a_stale_wrapper_gets_only_its_script_replaced() -> None:
    obj = job()
    old = apply(obj, mutate_pod(obj, GATED, None))
    old["metadata"]["annotations"]["gvirtus.io/threads"] = "4"
    patch = patch_document(mutate_pod(old, GATED, None))
    assert [(op["op"], op["path"]) for op in patch] == [("replace", "/spec/containers/0/command/2")]


def test_a_wrapped_command_is_never_wrapped_twice() -> None:
    obj = job()
    once = apply(obj, mutate_pod(obj, PINNED, "10.96.0.10"))
    twice = apply(once, mutate_pod(once, GATED, None))
    command = container(twice, "finetune")["command"]
    assert command.count("/bin/sh") == 1
    assert command[4:] == ["python3", "train.py"]


def test_a_read_only_root_filesystem_is_warned_about() -> None:
    obj = job()
    obj["spec"]["containers"][0]["securityContext"] = {"readOnlyRootFilesystem": True}
    warnings = mutate_pod(obj, GATED, None).warnings
    assert any("read-only root filesystem" in w for w in warnings)


@pytest.mark.parametrize("settings", [GATED, PINNED], ids=["controller", "dns"])
def test_switching_from_sed_to_mount_restores_the_original_command(settings: Settings) -> None:
    obj = job()
    address = BACKEND_IP if settings.placement == "dns" else None
    sed_pod = apply(obj, mutate_pod(obj, settings, address))
    sed_pod["metadata"]["annotations"]["gvirtus.io/strategy"] = "mount"
    mounted = apply(sed_pod, mutate_pod(sed_pod, settings, address))
    item = container(mounted, "finetune")
    assert item["command"] == ["python3", "train.py"]
    assert not is_sed_wrapped(item["command"])
    assert BACKEND_ENV not in env_of(item)
    assert_valid_pod(mounted)
    assert mutate_pod(mounted, settings, address).patch == []


@pytest.mark.parametrize("settings", [SED, Settings(strategy="sed", placement="dns")])
def test_switching_from_mount_to_sed_removes_the_mount_volume_and_annotation(
    settings: Settings,
) -> None:
    obj = pod("pod-stale-mount-v1.json")
    obj["spec"]["containers"][0]["command"] = ["start-notebook.sh"]
    address = BACKEND_IP if settings.placement == "dns" else None
    after = apply(obj, mutate_pod(obj, settings, address))
    assert PROPERTIES_VOLUME not in [v["name"] for v in after["spec"]["volumes"]]
    assert PROPERTIES_VOLUME not in [
        m["name"] for m in after["spec"]["containers"][0]["volumeMounts"]
    ]
    assert PROPERTIES_ANNOTATION not in after["metadata"]["annotations"]
    assert is_sed_wrapped(after["spec"]["containers"][0]["command"])
    assert DOWNWARD_BACKEND in after["spec"]["containers"][0]["env"]
    assert_valid_pod(after)
    assert mutate_pod(after, settings, address).patch == []
