"""Backend load measured where it happens (the agent beside each backend) and placement by it, with
real connections on real nodes."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.node.kube import STANDIN_FRONTEND, Kube, wait_until
from tests.node.workloads import BACKEND_ANNOTATION, STANDIN_COMMAND, gvirtus_pod

AGENT_PORT = 9180
SKEW = "load-skew"
HAND_CLIENTS = 3  # clients the controller did not place: only measured load shows them


def agent_load(backend_ip: str) -> dict[str, Any]:
    answer = httpx.get(f"http://{backend_ip}:{AGENT_PORT}/load", timeout=5.0)
    answer.raise_for_status()
    load: dict[str, Any] = answer.json()
    return load


def open_peers(kube: Kube, backend_ip: str) -> list[str]:
    return [c["peer"][0] for c in kube.backend_connections(backend_ip) if c["open"]]


def hand_configured_client(name: str, backend_ip: str) -> list[dict[str, Any]]:
    """A plain pod (no GVirtuS label) whose own properties.json names ``backend_ip``, as a user
    configures GVirtuS by hand: the controller never sees it, the backend's agent does."""
    config = {
        "communicator": [
            {
                "endpoint": {
                    "suite": "tcp/ip",
                    "protocol": "tcp",
                    "server_address": backend_ip,
                    "port": "9999",
                },
                "plugins": ["cudart"],
            }
        ]
        * 2,
        "secure_application": False,
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": SKEW},
            "data": {"properties.json": json.dumps(config)},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": SKEW},
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": STANDIN_FRONTEND,
                        "imagePullPolicy": "Never",
                        "command": list(STANDIN_COMMAND),
                        "env": [
                            {"name": "GVIRTUS_CONFIG", "value": "/config/properties.json"},
                            {"name": "STANDIN_THREADS", "value": "2"},
                        ],
                        "volumeMounts": [{"name": "config", "mountPath": "/config"}],
                    }
                ],
                "volumes": [{"name": "config", "configMap": {"name": name}}],
            },
        },
    ]


def test_backend_probes_are_http_and_the_backend_image_has_no_shell(release: Kube) -> None:
    for pod in release.backend_pods():
        assert pod.spec is not None
        assert pod.metadata is not None
        (backend,) = [c for c in pod.spec.containers if c.name == "backend"]
        assert backend.readinessProbe is not None
        assert backend.readinessProbe.httpGet is not None
        assert backend.livenessProbe is not None
        assert backend.livenessProbe.httpGet is not None
        shell = release.kubectl(
            "exec", "-n", "gvirtus-system", pod.metadata.name or "", "-c", "backend", "--",
            "/bin/sh", "-c", "true", check=False,
        )  # fmt: skip
        assert shell.returncode != 0, "the stand-in backend image has no shell"


def test_new_pods_go_to_the_backend_with_fewer_measured_clients(release: Kube) -> None:
    backends = sorted(p.status.podIP or "" for p in release.backend_pods() if p.status)
    assert len(backends) == 2
    # The backend placement would pick first by address, were load not measured.
    busy, idle = backends[0], backends[1]
    release.ensure_namespace(SKEW)
    documents = [
        d for i in range(HAND_CLIENTS) for d in hand_configured_client(f"by-hand-{i}", busy)
    ]
    release.apply(documents)
    try:
        for i in range(HAND_CLIENTS):
            release.wait_running(SKEW, f"by-hand-{i}")
        wait_until(
            lambda: len(agent_load(busy)["clients"]) >= HAND_CLIENTS, "the agent to see them"
        )
        # The agent counts what the backend itself accepted.
        for ip in backends:
            load = agent_load(ip)
            peers = open_peers(release, ip)
            assert load["listening"] is True
            assert load["connections"] == len(peers), (load, peers)
            assert load["clients"] == sorted(set(peers))
        # The controller has read the agents once its gauge shows the hand-configured clients.
        gauge = f'gvirtus_controller_backend_clients{{backend="{busy}:9999"}} {HAND_CLIENTS}.0'
        wait_until(lambda: gauge in controller_metrics(release), "the controller's poll")
        release.apply([gvirtus_pod(f"placed-{i}", SKEW) for i in range(2)])
        for i in range(2):
            pod = release.wait_running(SKEW, f"placed-{i}")
            assert pod.metadata is not None
            assert pod.status is not None
            pinned = (pod.metadata.annotations or {})[BACKEND_ANNOTATION]
            assert pinned == f"{idle}:9999", f"placed-{i} went to the busy backend"
        placed = release.pod(SKEW, "placed-0")
        assert placed.status is not None
        wait_until(
            lambda: (
                placed.status is not None and placed.status.podIP in agent_load(idle)["clients"]
            ),
            "the placed pod's connection measured on its backend",
        )
    finally:
        release.kubectl("delete", "namespace", SKEW, "--wait=false", check=False)


def controller_metrics(kube: Kube) -> str:
    (controller,) = kube.component_pods("controller")
    assert controller.status is not None
    assert controller.status.podIP
    return httpx.get(f"http://{controller.status.podIP}:8080/metrics", timeout=5.0).text


def test_agent_metrics_name_the_backend_pod(release: Kube) -> None:
    for pod in release.backend_pods():
        assert pod.status is not None
        assert pod.metadata is not None
        text = httpx.get(f"http://{pod.status.podIP}:{AGENT_PORT}/metrics", timeout=5.0).text
        assert f'gvirtus_backend_listening{{pod="{pod.metadata.name}"}} 1.0' in text, text[:2000]
