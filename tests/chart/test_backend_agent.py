"""The backend agent in the chart: a sidecar of the backend pod whose HTTP endpoints replace the
shell probe, found by the controller through the headless Service, and confined like the rest."""

from __future__ import annotations

from typing import Any

import pytest
from gvirtus_kai_backend_agent.settings import Settings

from tests.chart.conftest import HelmError, Manifest, container, pod_spec, render


def backend(values: dict[str, Any] | None = None) -> Manifest:
    return render(values=values or {}).one("DaemonSet", "backend")


def agent_env(workload: Manifest) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in container(workload, "agent")["env"]
    }


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_with_the_agent_the_backend_probes_are_gets_of_its_readyz(probe: str) -> None:
    workload = backend({"backend.agent.port": 9300})

    assert container(workload, "backend")[probe]["httpGet"] == {"path": "/readyz", "port": 9300}
    assert "exec" not in container(workload, "backend")[probe]


@pytest.mark.parametrize("probe", ["readinessProbe", "livenessProbe"])
def test_without_the_agent_the_backend_probes_are_the_shell_script(probe: str) -> None:
    workload = backend({"backend.agent.enabled": False})

    assert [c["name"] for c in pod_spec(workload)["containers"]] == ["backend"]
    assert container(workload)[probe]["exec"]["command"][:2] == ["/bin/sh", "-c"]


def test_the_agent_is_probed_on_its_own_named_port() -> None:
    agent = container(backend(), "agent")

    assert agent["ports"] == [{"name": "agent", "containerPort": 9180, "protocol": "TCP"}]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "agent"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "agent"}


def test_the_agent_reads_the_gvirtus_port_and_its_pod_name_from_the_chart() -> None:
    env = agent_env(backend({"backend.containerPort": 7000, "backend.agent.port": 9300}))

    assert env["GVIRTUS_KAI_GVIRTUS_PORT"] == "7000"
    assert env["GVIRTUS_KAI_HEALTH_PORT"] == "9300"
    assert env["GVIRTUS_KAI_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_agent_settings_accept_the_rendered_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = agent_env(backend({"backend.agent.sampleIntervalSeconds": 0.5}))
    for name, value in env.items():
        if name.startswith("GVIRTUS_KAI_") and isinstance(value, str):
            monkeypatch.setenv(name, value)

    settings = Settings()

    assert (settings.gvirtus_port, settings.health_port) == (9999, 9180)
    assert settings.sample_interval_seconds == 0.5
    assert set(env) - {"NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"} == {
        f"GVIRTUS_KAI_{name.upper()}" for name in Settings.model_fields
    } - {"GVIRTUS_KAI_PROC_NET", "GVIRTUS_KAI_HEALTH_HOST"}


def test_the_agent_gets_the_nodes_gpus_for_nvml_only_unless_told_not_to() -> None:
    default = agent_env(backend())
    unset = agent_env(backend({"backend.agent.nvidiaVisibleDevices": ""}))

    assert (default["NVIDIA_VISIBLE_DEVICES"], default["NVIDIA_DRIVER_CAPABILITIES"]) == (
        "all",
        "utility",
    )
    assert "NVIDIA_VISIBLE_DEVICES" not in unset
    assert "NVIDIA_DRIVER_CAPABILITIES" not in unset


def test_the_agent_requests_no_gpu_and_is_confined_like_every_container() -> None:
    agent = container(backend(), "agent")

    assert "nvidia.com/gpu" not in agent["resources"]["limits"]
    assert agent["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert "volumeMounts" not in agent  # /proc/net of the pod's own network namespace


def test_the_agent_image_defaults_to_the_released_one_and_follows_its_values() -> None:
    default = container(backend(), "agent")
    local = container(
        backend({"backend.agent.image": {"repository": "localhost/agent", "tag": "dev",
                                         "digest": "", "pullPolicy": "Never"}}),
        "agent",
    )  # fmt: skip

    assert default["image"].startswith("ghcr.io/gvirtus/gvirtus-kai-backend-agent:")
    assert (local["image"], local["imagePullPolicy"]) == ("localhost/agent:dev", "Never")


def test_only_the_headless_service_carries_the_agent_port() -> None:
    manifests = render()
    headless = manifests.named("Service", "gvirtus-backend-headless")
    clusterip = manifests.named("Service", "gvirtus-backend")

    assert [p["name"] for p in headless["spec"]["ports"]] == ["gvirtus", "agent"]
    assert [p["name"] for p in clusterip["spec"]["ports"]] == ["gvirtus"]


def test_without_the_agent_the_headless_service_has_only_the_gvirtus_port() -> None:
    headless = render(values={"backend.agent.enabled": False}).named(
        "Service", "gvirtus-backend-headless"
    )

    assert [p["name"] for p in headless["spec"]["ports"]] == ["gvirtus"]


def test_an_agent_port_equal_to_the_gvirtus_port_is_refused() -> None:
    with pytest.raises(HelmError, match=r"backend\.agent\.port 9999 is the GVirtuS port"):
        render(values={"backend.agent.port": 9999})
