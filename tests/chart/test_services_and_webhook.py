"""Services, probes and the MutatingWebhookConfiguration follow the values."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import NAMESPACE, SCENARIOS, HelmError, container, pod_spec, render


def test_backend_service_maps_34567_to_the_backend_container_port() -> None:
    manifests = render()
    service = manifests.named("Service", "gvirtus-backend")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "gvirtus", "port": 34567, "targetPort": 9999, "protocol": "TCP"}
    ]
    ports = container(manifests.one("DaemonSet", "backend"), "backend")["ports"]
    assert ports == [{"name": "gvirtus", "containerPort": 9999, "protocol": "TCP"}]


def test_backend_service_keeps_each_client_on_one_backend() -> None:
    # GVirtuS opens a connection per application thread; all of them must reach one GPU.
    service = render().named("Service", "gvirtus-backend")
    assert service["spec"]["sessionAffinity"] == "ClientIP"


@pytest.mark.parametrize(
    ("values", "name", "port"),
    [
        ({}, "gvirtus-backend-headless", 9999),
        (
            {"backend.service.name": "gpu-rpc", "backend.containerPort": 7000},
            "gpu-rpc-headless",
            7000,
        ),
    ],
)
def test_headless_backend_service_lists_ready_pods_on_the_container_port(
    values: dict[str, Any], name: str, port: int
) -> None:
    manifests = render(values=values)
    headless = manifests.named("Service", name)
    clusterip = manifests.named("Service", values.get("backend.service.name", "gvirtus-backend"))
    assert headless["spec"] == {
        "clusterIP": "None",
        "publishNotReadyAddresses": False,
        "selector": clusterip["spec"]["selector"],
        "ports": [
            {"name": "gvirtus", "port": port, "targetPort": port, "protocol": "TCP"},
            {"name": "agent", "port": 9180, "targetPort": "agent", "protocol": "TCP"},
        ],
    }
    assert headless["metadata"]["labels"] == clusterip["metadata"]["labels"]


def test_backend_service_name_leaves_room_for_the_headless_suffix() -> None:
    with pytest.raises(HelmError, match="values don't meet the specifications"):
        render(values={"backend.service.name": "b" * 55})
    longest = render(values={"backend.service.name": "b" * 54})
    assert longest.named("Service", "b" * 54 + "-headless")


def test_webhook_service_maps_443_to_the_webhook_container_port() -> None:
    manifests = render()
    service = manifests.named("Service", "gvirtus-webhook")
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}
    ]
    ports = container(manifests.one("Deployment", "webhook"))["ports"]
    assert ports == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]


def test_traffic_distribution_is_rendered_only_when_set() -> None:
    assert "trafficDistribution" not in render().named("Service", "gvirtus-backend")["spec"]
    service = render(
        values={"backend.service.trafficDistribution": "PreferClose"}, kube_version="1.31.0"
    ).named("Service", "gvirtus-backend")
    assert service["spec"]["trafficDistribution"] == "PreferClose"


def test_traffic_distribution_on_a_cluster_older_than_1_31_fails_with_a_reason() -> None:
    with pytest.raises(HelmError, match=r"trafficDistribution needs Kubernetes >= 1\.31"):
        render(values={"backend.service.trafficDistribution": "PreferClose"}, kube_version="1.30.0")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_backend_probes_never_connect_to_the_gvirtus_port(scenario: str) -> None:
    # GVirtuS never closes an accepted connection: a TCP probe would leak a descriptor per check.
    # With the agent both ask its /readyz (it reads /proc/net/tcp*), else a shell reads the tables.
    for backend in render(scenario).of_component("backend"):
        if backend["kind"] != "DaemonSet":
            continue
        gvirtus = container(backend, "backend")
        agent_ports = {
            port["containerPort"]
            for c in pod_spec(backend)["containers"]
            if c["name"] == "agent"
            for port in c["ports"]
        }
        probes = [gvirtus[p] for p in ("readinessProbe", "livenessProbe")]
        assert "startupProbe" not in gvirtus
        for probe in probes:
            assert set(probe) & {"tcpSocket", "grpc"} == set()
            if "httpGet" in probe:
                assert probe["httpGet"]["path"] == "/readyz"
                assert probe["httpGet"]["port"] in agent_ports
                assert probe["httpGet"]["port"] != gvirtus["ports"][0]["containerPort"]
            else:
                assert probe["exec"]["command"][:2] == ["/bin/sh", "-c"]
                assert "/proc/net/tcp" in probe["exec"]["command"][2]


def test_backend_probe_timing_comes_from_values() -> None:
    values = {
        "backend.readinessProbe.initialDelaySeconds": 1,
        "backend.readinessProbe.periodSeconds": 3,
        "backend.livenessProbe.initialDelaySeconds": 40,
        "backend.livenessProbe.periodSeconds": 30,
    }
    backend = container(render(values=values).one("DaemonSet", "backend"), "backend")
    readiness, liveness = backend["readinessProbe"], backend["livenessProbe"]
    assert (readiness["initialDelaySeconds"], readiness["periodSeconds"]) == (1, 3)
    assert (liveness["initialDelaySeconds"], liveness["periodSeconds"]) == (40, 30)


def test_backend_requests_gpus_or_uses_a_runtime_class() -> None:
    default = render().one("DaemonSet", "backend")
    assert container(default, "backend")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "runtimeClassName" not in pod_spec(default)
    runtime = render(values={"backend.gpu.count": 0, "backend.runtimeClassName": "nvidia"}).one(
        "DaemonSet", "backend"
    )
    assert "nvidia.com/gpu" not in container(runtime, "backend")["resources"]["limits"]
    assert pod_spec(runtime)["runtimeClassName"] == "nvidia"


def test_backend_command_args_and_env_pass_through() -> None:
    backend = container(
        render(
            values={
                "backend.command": ["/usr/local/gvirtus/bin/gvirtus-backend"],
                "backend.args": ["/usr/local/gvirtus/etc/properties.json"],
                "backend.env": [{"name": "GVIRTUS_LOGLEVEL", "value": "10000"}],
            }
        ).one("DaemonSet", "backend"),
        "backend",
    )
    assert backend["command"] == ["/usr/local/gvirtus/bin/gvirtus-backend"]
    assert backend["args"] == ["/usr/local/gvirtus/etc/properties.json"]
    assert backend["env"] == [{"name": "GVIRTUS_LOGLEVEL", "value": "10000"}]


def _shutdown_seconds(webhook: dict[str, Any]) -> float:
    """What the webhook process spends after SIGTERM at most: its delay and its drain."""
    env = {e["name"]: e.get("value") for e in container(webhook)["env"]}
    delay = float(env["GVIRTUS_KAI_SHUTDOWN_DELAY_SECONDS"])
    return delay + float(env["GVIRTUS_KAI_SHUTDOWN_DRAIN_SECONDS"])


def test_webhook_sleeps_before_sigterm_by_default_so_endpoints_drain_first() -> None:
    webhook = render().one("Deployment", "webhook")
    assert container(webhook)["lifecycle"]["preStop"]["sleep"]["seconds"] > 0


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"webhook.preStopSleepSeconds": 12, "webhook.timeoutSeconds": 25},
        {"webhook.shutdownDelaySeconds": 0, "webhook.timeoutSeconds": 3},
        {"webhook.preStopSleepSeconds": 0, "webhook.shutdownDelaySeconds": 7},
    ],
)
def test_webhook_grace_period_covers_the_sleep_and_the_servers_whole_shutdown(
    values: dict[str, Any],
) -> None:
    # The kubelet kills the container when the grace period ends: it must not cut the drain.
    webhook = render(values=values).one("Deployment", "webhook")
    sleep = container(webhook).get("lifecycle", {}).get("preStop", {}).get("sleep", {})
    grace = pod_spec(webhook)["terminationGracePeriodSeconds"]
    assert grace == sleep.get("seconds", 0) + _shutdown_seconds(webhook)
    drain = next(e for e in container(webhook)["env"] if e["name"].endswith("_DRAIN_SECONDS"))
    hook = render(values=values).one("MutatingWebhookConfiguration")["webhooks"][0]
    assert drain["value"] == str(hook["timeoutSeconds"])


def test_webhook_without_a_pre_stop_sleep_has_no_lifecycle_hook() -> None:
    webhook = render(values={"webhook.preStopSleepSeconds": 0}).one("Deployment", "webhook")
    assert "lifecycle" not in container(webhook)
    assert pod_spec(webhook)["terminationGracePeriodSeconds"] == 1 + 10


def test_webhook_turns_unready_within_seconds() -> None:
    # A failing /readyz takes the pod out of the endpoints within the preStop sleep.
    webhook = container(render().one("Deployment", "webhook"))
    readiness = webhook["readinessProbe"]
    unready_after = readiness["periodSeconds"] * readiness["failureThreshold"]
    assert unready_after <= webhook["lifecycle"]["preStop"]["sleep"]["seconds"]


def test_webhook_probes_use_https_health_endpoints() -> None:
    webhook = container(render().one("Deployment", "webhook"))
    assert webhook["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "https",
        "scheme": "HTTPS",
    }
    assert webhook["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "https",
        "scheme": "HTTPS",
    }


@pytest.mark.parametrize(
    ("component", "kind"), [("labeler", "DaemonSet"), ("device-plugin", "DaemonSet")]
)
def test_node_agents_have_http_liveness_on_their_health_port(component: str, kind: str) -> None:
    agent = container(render().one(kind, component))
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert agent["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]


def test_device_plugin_is_ready_only_once_registered_with_the_kubelet() -> None:
    plugin = container(render().one("DaemonSet", "device-plugin"))
    assert plugin["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}


def test_device_plugin_readiness_timing_comes_from_values() -> None:
    values = {
        "devicePlugin.readinessProbe.initialDelaySeconds": 3,
        "devicePlugin.readinessProbe.periodSeconds": 7,
    }
    probe = container(render(values=values).one("DaemonSet", "device-plugin"))["readinessProbe"]
    assert (probe["initialDelaySeconds"], probe["periodSeconds"]) == (3, 7)


def test_webhook_configuration_scope_is_pod_create_only() -> None:
    hook = render().one("MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["name"] == "pods.gvirtus.io"
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]
    assert hook["sideEffects"] == "None"


def test_webhook_configuration_calls_the_service_path_mutate() -> None:
    hook = render().one("MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["clientConfig"]["service"] == {
        "name": "gvirtus-webhook",
        "namespace": NAMESPACE,
        "path": "/mutate",
        "port": 443,
    }


def test_webhook_skips_system_namespaces_its_own_and_opted_out_ones() -> None:
    hook = render(values={"webhook.excludeNamespaces": ["batch", "kube-system"]}).one(
        "MutatingWebhookConfiguration"
    )["webhooks"][0]
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", "kube-node-lease", NAMESPACE, "batch"],
            },
            {"key": "gvirtus.io/injection", "operator": "NotIn", "values": ["disabled"]},
        ]
    }


def test_webhook_policies_come_from_values() -> None:
    defaults = render().one("MutatingWebhookConfiguration")["webhooks"][0]
    assert (
        defaults["failurePolicy"],
        defaults["timeoutSeconds"],
        defaults["reinvocationPolicy"],
        defaults["matchPolicy"],
    ) == ("Fail", 10, "Never", "Equivalent")
    custom = render(
        values={
            "webhook.failurePolicy": "Ignore",
            "webhook.timeoutSeconds": 5,
            "webhook.reinvocationPolicy": "IfNeeded",
            "webhook.matchPolicy": "Exact",
        }
    ).one("MutatingWebhookConfiguration")["webhooks"][0]
    assert (
        custom["failurePolicy"],
        custom["timeoutSeconds"],
        custom["reinvocationPolicy"],
        custom["matchPolicy"],
    ) == ("Ignore", 5, "IfNeeded", "Exact")


def test_custom_opt_out_label_reaches_the_namespace_selector() -> None:
    hook = render("custom-labels-values.yaml").one("MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["namespaceSelector"]["matchExpressions"][1] == {
        "key": "example.com/gvirtus-injection",
        "operator": "NotIn",
        "values": ["off"],
    }


def test_single_webhook_replica_has_no_disruption_budget_or_spread() -> None:
    manifests = render()
    assert manifests.one("Deployment", "webhook")["spec"]["replicas"] == 1
    assert not manifests.of_kind("PodDisruptionBudget")
    assert "topologySpreadConstraints" not in pod_spec(manifests.one("Deployment", "webhook"))


def test_ha_webhook_gets_a_disruption_budget_and_topology_spread() -> None:
    manifests = render("ha-webhook-values.yaml")
    deployment = manifests.one("Deployment", "webhook")
    assert deployment["spec"]["replicas"] == 3
    selector = deployment["spec"]["selector"]["matchLabels"]
    pdb = manifests.one("PodDisruptionBudget", "webhook")
    assert pdb["spec"] == {"minAvailable": 2, "selector": {"matchLabels": selector}}
    assert pod_spec(deployment)["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector},
        }
    ]


def test_webhook_rollout_never_drops_below_the_replica_count() -> None:
    strategy = render().one("Deployment", "webhook")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_dns_timeout_not_below_the_webhook_timeout_fails_with_a_reason() -> None:
    with pytest.raises(HelmError, match=r"webhook.dns.timeoutSeconds \(10\) must be less than"):
        render(values={"webhook.dns.timeoutSeconds": 10, "webhook.timeoutSeconds": 10})


def test_dns_timeout_below_the_webhook_timeout_renders() -> None:
    webhook = render(values={"webhook.dns.timeoutSeconds": 9.5, "webhook.timeoutSeconds": 10})
    env = {e["name"]: e["value"] for e in container(webhook.one("Deployment", "webhook"))["env"]}
    assert env["GVIRTUS_KAI_DNS_TIMEOUT_SECONDS"] == "9.5"


@pytest.mark.parametrize("min_available", [3, 4, "100%", "67%"])
def test_disruption_budget_keeping_every_replica_fails_with_a_reason(
    min_available: int | str,
) -> None:
    # 67% of 3 replicas rounds up to 3, as Kubernetes computes it.
    values = {"webhook.replicaCount": 3, "webhook.podDisruptionBudget.minAvailable": min_available}
    with pytest.raises(HelmError, match="drains would block") as failure:
        render(values=values)
    assert f"minAvailable ({min_available})" in str(failure.value)


@pytest.mark.parametrize("min_available", [2, "66%", "50%"])
def test_disruption_budget_below_the_replica_count_renders(min_available: int | str) -> None:
    values = {"webhook.replicaCount": 3, "webhook.podDisruptionBudget.minAvailable": min_available}
    budget = render(values=values).one("PodDisruptionBudget", "webhook")
    assert budget["spec"]["minAvailable"] == min_available
