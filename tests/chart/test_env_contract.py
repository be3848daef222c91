"""Each service gets exactly the settings design.md's "Process interfaces" table defines."""

from __future__ import annotations

import pytest
from gvirtus_kai_device_plugin.settings import Settings as DevicePluginSettings
from gvirtus_kai_labeler.settings import Settings as LabelerSettings
from gvirtus_kai_webhook.settings import Settings as WebhookSettings
from pydantic_settings import BaseSettings

from tests.chart.conftest import container, env_of, render

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
    "webhook": DESIGN_SETTINGS["webhook"] | {"ENABLE_LABEL"},
    "labeler": DESIGN_SETTINGS["labeler"] | {"LOG_LEVEL"},
    "device-plugin": DESIGN_SETTINGS["device-plugin"] | {"LOG_LEVEL"},
}
WORKLOADS = {"webhook": "Deployment", "labeler": "DaemonSet", "device-plugin": "DaemonSet"}
SETTINGS: dict[str, type[BaseSettings]] = {
    "webhook": WebhookSettings,
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
    assert settings.backend_host == "gvirtus-backend.gvirtus-system.svc.cluster.local"
    assert settings.backend_port == 34567
    assert settings.frontend_label == "gvirtus.io/frontend.allowed=true"


def test_webhook_env_follows_values() -> None:
    env = env_of(
        render(
            values={
                "clusterDomain": "corp.internal",
                "backend.service.name": "gpu-rpc",
                "backend.service.port": 40000,
                "webhook.dns.nameservers": ["10.0.0.10", "10.0.0.11:5353"],
                "webhook.dns.timeoutSeconds": 0.5,
                "webhook.logLevel": "debug",
                "webhook.containerPort": 9443,
                "webhook.listenHost": "::",
            }
        ).one("Deployment", "webhook")
    )
    assert env["GVIRTUS_KAI_BACKEND_HOST"] == "gpu-rpc.gvirtus-system.svc.corp.internal"
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
        "GVIRTUS_KAI_BACKEND_HOST": "gvirtus-backend.gvirtus-system.svc.cluster.local",
        "GVIRTUS_KAI_BACKEND_PORT": "34567",
        "GVIRTUS_KAI_DNS_NAMESERVERS": "",
        "GVIRTUS_KAI_DNS_TIMEOUT_SECONDS": "2",
        "GVIRTUS_KAI_STRATEGY": "mount",
        "GVIRTUS_KAI_DEFAULT_GVIRTUS_HOME": "/usr/local/gvirtus",
        "GVIRTUS_KAI_PLUGINS": "cudart,cublas,curand,cudnn,cufft,cusolver,cusparse",
        "GVIRTUS_KAI_FRONTEND_LABEL": "gvirtus.io/frontend.allowed=true",
        "GVIRTUS_KAI_GPU_RESOURCE": "nvidia.com/gpu",
        "GVIRTUS_KAI_ENABLE_LABEL": "gvirtus.io/enabled",
        "GVIRTUS_KAI_LOG_LEVEL": "info",
    }


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
