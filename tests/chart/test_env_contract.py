"""Each service gets exactly the settings design.md's "Process interfaces" table defines.

The controller's settings are the contract of issue 9 (placement); the webhook's PLACEMENT setting
belongs to the same contract.
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


# design.md, "Process interfaces": the settings each process reads (prefix omitted).
DESIGN_SETTINGS = {
    "webhook": {
        "LISTEN_HOST",
        "LISTEN_PORT",
        "TLS_CERT_FILE",
        "TLS_KEY_FILE",
        "BACKEND_HOST",
        "BACKEND_PORT",
        "DNS_NAMESERVERS",
        "DNS_TIMEOUT_SECONDS",
        "STRATEGY",
        "DEFAULT_GVIRTUS_HOME",
        "PLUGINS",
        "FRONTEND_LABEL",
        "GPU_RESOURCE",
        "LOG_LEVEL",
        "PLACEMENT",
    },
    "controller": {
        "NAMESPACE",
        "BACKEND_SERVICE",
        "BACKEND_PORT_NAME",
        "ENABLE_LABEL",
        "PLUGINS",
        "POLICY",
        "MAX_PODS_PER_BACKEND",
        "ON_BACKEND_LOSS",
        "BACKEND_LOSS_GRACE_SECONDS",
        "LEADER_ELECTION",
        "LEASE_NAME",
        "POD_NAME",
        "HEALTH_PORT",
        "LOG_LEVEL",
    },
    "labeler": {"NODE_NAME", "LABELS", "HEALTH_PORT"},
    "device-plugin": {
        "RESOURCE_NAME",
        "DEVICE_COUNT",
        "PLUGIN_DIR",
        "CDI_DIR",
        "CDI_KIND",
        "HEALTH_PORT",
    },
}
# What the chart sets: every design setting, plus LOG_LEVEL, which every service's Settings class
# reads, and the webhook's ENABLE_LABEL, the pod label key of the chart's objectSelector (the
# webhook must check the label it is sent for).
CHART_SETS = {
    # The shutdown pair ties the webhook's drain to terminationGracePeriodSeconds.
    "webhook": DESIGN_SETTINGS["webhook"]
    | {"ENABLE_LABEL", "SHUTDOWN_DELAY_SECONDS", "SHUTDOWN_DRAIN_SECONDS"},
    "controller": DESIGN_SETTINGS["controller"],
    "labeler": DESIGN_SETTINGS["labeler"] | {"LOG_LEVEL"},
    "device-plugin": DESIGN_SETTINGS["device-plugin"] | {"LOG_LEVEL"},
}
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


@pytest.mark.parametrize("component", sorted(WORKLOADS))
def test_chart_sets_the_design_settings_of_each_service(component: str) -> None:
    env = env_of(render().one(WORKLOADS[component], component))
    assert {name.removeprefix(PREFIX) for name in env} == CHART_SETS[component]
    assert all(name.startswith(PREFIX) for name in env)


@pytest.mark.parametrize("component", sorted(SETTINGS))
def test_every_env_name_is_a_field_of_the_service_settings(component: str) -> None:
    settings = SETTINGS[component]
    env = env_of(render().one(WORKLOADS[component], component))
    fields = {name.upper() for name in settings.model_fields}
    assert {name.removeprefix(PREFIX) for name in env} <= fields
    assert settings.model_config.get("env_prefix") == PREFIX


@pytest.mark.parametrize("component", sorted(SETTINGS))
def test_design_settings_are_all_known_to_the_service(component: str) -> None:
    fields = {name.upper() for name in SETTINGS[component].model_fields}
    assert fields >= DESIGN_SETTINGS[component]


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


def test_webhook_defaults_match_the_design_table() -> None:
    env = env_of(render().one("Deployment", "webhook"))
    assert env == {
        "GVIRTUS_KAI_LISTEN_HOST": "0.0.0.0",
        "GVIRTUS_KAI_LISTEN_PORT": "8443",
        "GVIRTUS_KAI_TLS_CERT_FILE": "/tls/tls.crt",
        "GVIRTUS_KAI_TLS_KEY_FILE": "/tls/tls.key",
        "GVIRTUS_KAI_BACKEND_HOST": "gvirtus-backend-headless.gvirtus-system.svc.cluster.local",
        "GVIRTUS_KAI_BACKEND_PORT": "9999",
        "GVIRTUS_KAI_PLACEMENT": "controller",
        "GVIRTUS_KAI_DNS_NAMESERVERS": "",
        "GVIRTUS_KAI_DNS_TIMEOUT_SECONDS": "2",
        "GVIRTUS_KAI_STRATEGY": "mount",
        "GVIRTUS_KAI_DEFAULT_GVIRTUS_HOME": "/usr/local/gvirtus",
        "GVIRTUS_KAI_PLUGINS": "cudart,cublas,curand,cudnn,cufft,cusolver,cusparse",
        "GVIRTUS_KAI_FRONTEND_LABEL": "gvirtus.io/frontend.allowed=true",
        "GVIRTUS_KAI_GPU_RESOURCE": "nvidia.com/gpu",
        "GVIRTUS_KAI_ENABLE_LABEL": "gvirtus.io/enabled",
        "GVIRTUS_KAI_LOG_LEVEL": "info",
        "GVIRTUS_KAI_SHUTDOWN_DELAY_SECONDS": "1",
        "GVIRTUS_KAI_SHUTDOWN_DRAIN_SECONDS": "10",
    }


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


def test_device_plugin_defaults_match_the_design_table() -> None:
    env = env_of(render().one("DaemonSet", "device-plugin"))
    assert env == {
        "GVIRTUS_KAI_RESOURCE_NAME": "nvidia.com/gpu",
        "GVIRTUS_KAI_DEVICE_COUNT": "16",
        "GVIRTUS_KAI_PLUGIN_DIR": "/var/lib/kubelet/device-plugins",
        "GVIRTUS_KAI_CDI_DIR": "/var/run/cdi",
        "GVIRTUS_KAI_CDI_KIND": "gvirtus.io/vgpu",
        "GVIRTUS_KAI_HEALTH_PORT": "8080",
        "GVIRTUS_KAI_LOG_LEVEL": "info",
    }


def test_device_plugin_mounts_the_host_directories_it_is_told_about() -> None:
    plugin = render(values={"devicePlugin.pluginDir": "/var/lib/k0s/kubelet/device-plugins"}).one(
        "DaemonSet", "device-plugin"
    )
    mounts = {m["name"]: m["mountPath"] for m in container(plugin)["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in plugin["spec"]["template"]["spec"]["volumes"]}
    assert (
        mounts
        == host
        == {
            "device-plugins": "/var/lib/k0s/kubelet/device-plugins",
            "cdi": "/var/run/cdi",
        }
    )
    assert env_of(plugin)["GVIRTUS_KAI_PLUGIN_DIR"] == "/var/lib/k0s/kubelet/device-plugins"


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


def test_controller_defaults_match_the_placement_contract() -> None:
    env = env_of(render().one("Deployment", "controller"))
    assert env == {
        "GVIRTUS_KAI_NAMESPACE": NAMESPACE,
        "GVIRTUS_KAI_BACKEND_SERVICE": "gvirtus-backend-headless",
        "GVIRTUS_KAI_BACKEND_PORT_NAME": "gvirtus",
        "GVIRTUS_KAI_ENABLE_LABEL": "gvirtus.io/enabled",
        "GVIRTUS_KAI_PLUGINS": "cudart,cublas,curand,cudnn,cufft,cusolver,cusparse",
        "GVIRTUS_KAI_POLICY": "leastPods",
        "GVIRTUS_KAI_MAX_PODS_PER_BACKEND": "0",
        "GVIRTUS_KAI_ON_BACKEND_LOSS": "keep",
        "GVIRTUS_KAI_BACKEND_LOSS_GRACE_SECONDS": "60",
        "GVIRTUS_KAI_LEADER_ELECTION": "false",
        "GVIRTUS_KAI_LEASE_NAME": "gvirtus-kai-controller",
        "GVIRTUS_KAI_POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "GVIRTUS_KAI_HEALTH_PORT": "8080",
        "GVIRTUS_KAI_LOG_LEVEL": "info",
    }


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
    assert controller["GVIRTUS_KAI_ENABLE_LABEL"] == webhook["GVIRTUS_KAI_ENABLE_LABEL"]
    hook = manifests.one("MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["objectSelector"] == {
        "matchLabels": {controller["GVIRTUS_KAI_ENABLE_LABEL"]: "true"}
    }


@pytest.mark.parametrize("values", [{}, {"backend.containerPort": 7777, "clusterDomain": "x.y"}])
def test_both_placement_paths_pin_to_the_headless_service_and_the_container_port(
    values: dict[str, Any],
) -> None:
    manifests = render(values=values)
    headless = next(s for s in manifests.of_kind("Service") if s["spec"].get("clusterIP") == "None")
    name = headless["metadata"]["name"]
    (port,) = headless["spec"]["ports"]
    container_ports = container(manifests.one("DaemonSet", "backend"))["ports"]
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


def test_the_webhooks_own_defaults_are_the_charts() -> None:
    # Outside the chart (gvirtus-kai inject, a hand-run webhook) the same contract holds.
    env = env_of(render().one("Deployment", "webhook"))
    defaults = WebhookSettings.model_fields
    for name in ("placement", "backend_host", "backend_port"):
        assert str(defaults[name].default) == env[f"{PREFIX}{name.upper()}"], name
