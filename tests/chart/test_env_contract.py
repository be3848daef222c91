"""What the chart passes each service: settings its Settings class knows and accepts, the
service's own defaults unless the chart has a reason to differ, and values that follow the chart's.
"""

from __future__ import annotations

from typing import Any

import pytest
from gvirtus_kai_controller.settings import Settings as ControllerSettings
from gvirtus_kai_device_plugin.settings import Settings as DevicePluginSettings
from gvirtus_kai_labeler.settings import Settings as LabelerSettings
from gvirtus_kai_webhook.settings import Settings as WebhookSettings
from pydantic_settings import BaseSettings

from tests.chart.conftest import NAMESPACE, container, env_of, render

PREFIX = "GVIRTUS_KAI_"

WORKLOADS = {
    "webhook": "Deployment",
    "controller": "Deployment",
    "labeler": "DaemonSet",
    "device-plugin": "DaemonSet",
}
SETTINGS: dict[str, type[BaseSettings]] = {
    "webhook": WebhookSettings,
    "controller": ControllerSettings,
    "labeler": LabelerSettings,
    "device-plugin": DevicePluginSettings,
}
# Where the chart's default install deliberately differs from the service's own default.
CHART_CHOICES = {
    # The release namespace and the release's own Lease name (names are per release); the policy
    # follows the backend agent (leastLoaded when the chart deploys one).
    "controller": {"NAMESPACE", "LEASE_NAME", "POLICY"},
    # In a cluster a stopping pod keeps getting requests until its endpoints drop it.
    "webhook": {"SHUTDOWN_DELAY_SECONDS"},
}


@pytest.mark.parametrize("component", sorted(WORKLOADS))
def test_every_env_name_carries_the_settings_prefix(component: str) -> None:
    env = env_of(render().one(WORKLOADS[component], component))
    assert env
    assert all(name.startswith(PREFIX) for name in env)


@pytest.mark.parametrize("component", sorted(SETTINGS))
def test_with_default_values_each_service_gets_its_own_defaults(
    component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A service run by hand (or the injector) then behaves as the chart installs it. Values from
    # the downward API exist only at run time and are left out.
    env = env_of(render().one(WORKLOADS[component], component))
    passed = {name: value for name, value in env.items() if isinstance(value, str)}
    for name, value in passed.items():
        monkeypatch.setenv(name, value)
    settings = SETTINGS[component]()  # raises if the chart passes a value the service refuses
    defaults = SETTINGS[component].model_construct()  # the class's defaults, no environment
    differing = {
        name.removeprefix(PREFIX)
        for name in passed
        if getattr(settings, name.removeprefix(PREFIX).lower())
        != getattr(defaults, name.removeprefix(PREFIX).lower())
    }
    assert differing <= CHART_CHOICES.get(component, set()), "chart and service disagree"


@pytest.mark.parametrize("component", sorted(SETTINGS))
def test_every_env_name_is_a_field_of_the_service_settings(component: str) -> None:
    settings = SETTINGS[component]
    env = env_of(render().one(WORKLOADS[component], component))
    fields = {name.upper() for name in settings.model_fields}
    assert {name.removeprefix(PREFIX) for name in env} <= fields
    assert settings.model_config.get("env_prefix") == PREFIX


def test_webhook_settings_accept_the_rendered_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env_of(
        render("sed-strategy-values.yaml").one("Deployment", "webhook")
    ).items():
        monkeypatch.setenv(name, value)
    settings = WebhookSettings()
    assert settings.strategy == "sed"
    assert settings.default_gvirtus_home == "/opt/gvirtus"
    assert settings.plugins == ("cudart", "cublas")
    assert settings.backend_host == "gvirtus-backend-headless.gvirtus-system.svc.cluster.local"
    assert settings.backend_port == 9999
    assert settings.frontend_label == "gvirtus.io/frontend.allowed=true"


def test_webhook_env_follows_values() -> None:
    env = env_of(
        render(
            values={
                "clusterDomain": "corp.internal",
                "backend.service.name": "gpu-rpc",
                "backend.containerPort": 40000,
                "webhook.dns.nameservers": ["10.0.0.10", "10.0.0.11:5353"],
                "webhook.dns.timeoutSeconds": 0.5,
                "webhook.logLevel": "debug",
                "webhook.containerPort": 9443,
                "webhook.listenHost": "::",
            }
        ).one("Deployment", "webhook")
    )
    assert env["GVIRTUS_KAI_BACKEND_HOST"] == "gpu-rpc-headless.gvirtus-system.svc.corp.internal"
    assert env["GVIRTUS_KAI_BACKEND_PORT"] == "40000"
    assert env["GVIRTUS_KAI_DNS_NAMESERVERS"] == "10.0.0.10,10.0.0.11:5353"
    assert env["GVIRTUS_KAI_DNS_TIMEOUT_SECONDS"] == "0.5"
    assert env["GVIRTUS_KAI_LOG_LEVEL"] == "debug"
    assert env["GVIRTUS_KAI_LISTEN_PORT"] == "9443"
    assert env["GVIRTUS_KAI_LISTEN_HOST"] == "::"


def test_webhook_shutdown_settings_parse_from_the_rendered_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = {"webhook.shutdownDelaySeconds": 3, "webhook.timeoutSeconds": 25}
    for name, value in env_of(render(values=values).one("Deployment", "webhook")).items():
        monkeypatch.setenv(name, value)
    settings = WebhookSettings()
    assert settings.shutdown_delay_seconds == 3
    # Reviews in flight may finish for as long as the API server still waits for them.
    assert settings.shutdown_drain_seconds == 25


def test_device_plugin_mounts_the_host_directories_it_is_told_about() -> None:
    plugin = render(
        values={
            "devicePlugin.pluginDir": "/var/lib/k0s/kubelet/device-plugins",
            "devicePlugin.podResourcesDir": "/var/lib/k0s/kubelet/pod-resources",
        }
    ).one("DaemonSet", "device-plugin")
    mounts = {m["name"]: m["mountPath"] for m in container(plugin)["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in plugin["spec"]["template"]["spec"]["volumes"]}
    assert (
        mounts
        == host
        == {
            "device-plugins": "/var/lib/k0s/kubelet/device-plugins",
            "cdi": "/var/run/cdi",
            "pod-resources": "/var/lib/k0s/kubelet/pod-resources",
        }
    )
    env = env_of(plugin)
    assert env["GVIRTUS_KAI_PLUGIN_DIR"] == "/var/lib/k0s/kubelet/device-plugins"
    assert (
        env["GVIRTUS_KAI_POD_RESOURCES_SOCKET"] == "/var/lib/k0s/kubelet/pod-resources/kubelet.sock"
    )


def test_device_plugin_mounts_only_the_pod_resources_directory_read_only() -> None:
    # It only connects to the kubelet's socket there; the other two it writes into.
    plugin = render().one("DaemonSet", "device-plugin")
    read_only = {m["name"]: m.get("readOnly", False) for m in container(plugin)["volumeMounts"]}
    assert read_only == {"device-plugins": False, "cdi": False, "pod-resources": True}


@pytest.mark.parametrize(
    ("component", "command"),
    [
        ("webhook", ["gvirtus-webhook"]),
        ("controller", ["gvirtus-controller"]),
        ("labeler", ["gvirtus-labeler"]),
        ("device-plugin", ["gvirtus-device-plugin"]),
    ],
)
def test_each_service_starts_with_its_console_script(component: str, command: list[str]) -> None:
    assert container(render().one(WORKLOADS[component], component))["command"] == command


def _load_rendered_env(component: str, monkeypatch: pytest.MonkeyPatch) -> None:
    workload = render("custom-labels-values.yaml").one(WORKLOADS[component], component)
    for name, value in env_of(workload).items():
        if isinstance(value, str):  # the node name comes from the downward API at run time
            monkeypatch.setenv(name, value)


def test_labeler_settings_parse_the_rendered_label_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _load_rendered_env("labeler", monkeypatch)
    assert LabelerSettings().labels == {
        "example.com/gvirtus-frontend": "false",
        "example.com/gvirtus-backend": "false",
    }


def test_webhook_settings_read_the_rendered_enable_label(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _load_rendered_env("webhook", monkeypatch)
    assert WebhookSettings().enable_label == "example.com/gvirtus"


def test_device_plugin_settings_read_the_rendered_resource_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _load_rendered_env("device-plugin", monkeypatch)
    settings = DevicePluginSettings()
    assert settings.resource_name == "example.com/vgpu"
    assert settings.device_count == 16


def test_controller_env_follows_values() -> None:
    env = env_of(
        render(
            values={
                "controller.policy": "sameZone",
                "controller.maxPodsPerBackend": 4,
                "controller.onBackendLoss": "evict",
                "controller.backendLossGraceSeconds": 30,
                "controller.healthPort": 9090,
                "controller.logLevel": "debug",
                "backend.service.name": "gpu-rpc",
                "webhook.plugins": ["cudart"],
                "enableLabel": "example.com/gvirtus",
            }
        ).one("Deployment", "controller")
    )
    assert env["GVIRTUS_KAI_POLICY"] == "sameZone"
    assert env["GVIRTUS_KAI_MAX_PODS_PER_BACKEND"] == "4"
    assert env["GVIRTUS_KAI_ON_BACKEND_LOSS"] == "evict"
    assert env["GVIRTUS_KAI_BACKEND_LOSS_GRACE_SECONDS"] == "30"
    assert env["GVIRTUS_KAI_HEALTH_PORT"] == "9090"
    assert env["GVIRTUS_KAI_LOG_LEVEL"] == "debug"
    assert env["GVIRTUS_KAI_BACKEND_SERVICE"] == "gpu-rpc-headless"
    assert env["GVIRTUS_KAI_PLUGINS"] == "cudart"
    assert env["GVIRTUS_KAI_ENABLE_LABEL"] == "example.com/gvirtus"


@pytest.mark.parametrize(("replicas", "elected"), [(1, "false"), (2, "true"), (3, "true")])
def test_controller_elects_a_leader_only_with_more_than_one_replica(
    replicas: int, elected: str
) -> None:
    controller = render(values={"controller.replicaCount": replicas}).one(
        "Deployment", "controller"
    )
    assert controller["spec"]["replicas"] == replicas
    assert env_of(controller)["GVIRTUS_KAI_LEADER_ELECTION"] == elected


def test_a_single_controller_is_replaced_never_doubled_during_a_rollout() -> None:
    # Without leader election, two controllers at once would both assign pods.
    single = render().one("Deployment", "controller")
    assert single["spec"]["strategy"] == {"type": "Recreate"}
    elected = render("controller-ha-evict-values.yaml").one("Deployment", "controller")
    assert "strategy" not in elected["spec"]  # rolling: the Lease keeps one leader


@pytest.mark.parametrize(
    ("values", "placement"),
    [
        ({}, "controller"),
        ({"webhook.strategy": "sed"}, "controller"),  # sed pods use DNS whatever this says
        ({"controller.enabled": False}, "dns"),
    ],
)
def test_webhook_placement_follows_the_controller(values: dict[str, Any], placement: str) -> None:
    env = env_of(render(values=values).one("Deployment", "webhook"))
    assert env["GVIRTUS_KAI_PLACEMENT"] == placement


@pytest.mark.parametrize(
    "scenario", [None, "custom-labels-values.yaml", "sed-strategy-values.yaml"]
)
def test_webhook_and_controller_build_the_same_frontend_config(scenario: str | None) -> None:
    # Both write properties.json (webhook on the DNS path, controller on the gated path) and
    # both must recognise the same pods.
    manifests = render(scenario)
    webhook = env_of(manifests.one("Deployment", "webhook"))
    controller = env_of(manifests.one("Deployment", "controller"))
    assert controller["GVIRTUS_KAI_PLUGINS"] == webhook["GVIRTUS_KAI_PLUGINS"]
    assert controller["GVIRTUS_KAI_FRONTEND_THREADS"] == webhook["GVIRTUS_KAI_FRONTEND_THREADS"]
    assert controller["GVIRTUS_KAI_ENABLE_LABEL"] == webhook["GVIRTUS_KAI_ENABLE_LABEL"]
    hook = manifests.one("MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["objectSelector"] == {
        "matchLabels": {controller["GVIRTUS_KAI_ENABLE_LABEL"]: "true"}
    }


def test_the_thread_count_reaches_both_writers_of_the_frontend_config() -> None:
    manifests = render(values={"webhook.frontendThreads": 48})
    for component in ("webhook", "controller"):
        assert (
            env_of(manifests.one("Deployment", component))["GVIRTUS_KAI_FRONTEND_THREADS"] == "48"
        )


@pytest.mark.parametrize("values", [{}, {"backend.containerPort": 7777, "clusterDomain": "x.y"}])
def test_both_placement_paths_pin_to_the_headless_service_and_the_container_port(
    values: dict[str, Any],
) -> None:
    manifests = render(values=values)
    headless = next(s for s in manifests.of_kind("Service") if s["spec"].get("clusterIP") == "None")
    name = headless["metadata"]["name"]
    # The GVirtuS port; the agent's port beside it is the controller's, for polling.
    port = next(p for p in headless["spec"]["ports"] if p["name"] == "gvirtus")
    container_ports = container(manifests.one("DaemonSet", "backend"), "backend")["ports"]
    assert {"name": port["name"], "containerPort": port["targetPort"], "protocol": "TCP"} in (
        container_ports
    )

    webhook = env_of(manifests.one("Deployment", "webhook"))
    domain = values.get("clusterDomain", "cluster.local")
    assert webhook["GVIRTUS_KAI_BACKEND_HOST"] == f"{name}.{NAMESPACE}.svc.{domain}"
    assert webhook["GVIRTUS_KAI_BACKEND_PORT"] == str(port["port"]) == str(port["targetPort"])

    controller = env_of(manifests.one("Deployment", "controller"))
    assert controller["GVIRTUS_KAI_NAMESPACE"] == headless["metadata"]["namespace"]
    assert controller["GVIRTUS_KAI_BACKEND_SERVICE"] == name
    assert controller["GVIRTUS_KAI_BACKEND_PORT_NAME"] == port["name"]


def test_controller_settings_parse_the_rendered_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workload = render("controller-ha-evict-values.yaml").one("Deployment", "controller")
    for name, value in env_of(workload).items():
        if isinstance(value, str):  # the pod name comes from the downward API at run time
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("GVIRTUS_KAI_POD_NAME", "gvirtus-kai-controller-0")
    settings = ControllerSettings()
    assert settings.policy == "sameZone"
    assert settings.max_pods_per_backend == 4
    assert settings.on_backend_loss == "evict"
    assert settings.backend_loss_grace_seconds == 30
    assert settings.leader_election is True
    assert settings.backend_service == "gvirtus-backend-headless"


@pytest.mark.parametrize(
    ("values", "placement"), [({}, "controller"), ({"controller.enabled": False}, "dns")]
)
def test_webhook_settings_read_the_rendered_placement(
    values: dict[str, Any], placement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env_of(render(values=values).one("Deployment", "webhook")).items():
        monkeypatch.setenv(name, value)
    assert WebhookSettings().placement == placement
