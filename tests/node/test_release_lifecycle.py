"""What an operator does to the release on real nodes: ``helm test``, ``helm upgrade`` with
custom values, losing a backend, and ``helm uninstall``. Each test leaves the default release
installed and ready again for the next one."""

from __future__ import annotations

import json

from lightkube.resources.core_v1 import Pod

from tests.node import chart
from tests.node.cluster import FRONTEND_NODE, NODE_NAMES
from tests.node.kube import Kube, is_ready, wait_until
from tests.node.test_node_agents import CDI_SPEC_DIR, DEFAULT_SLOTS, GPU, PLUGIN_SOCKET
from tests.node.workloads import example_pods, load_standin_examples

THREADS = 2


def test_helm_test_passes(release: Kube) -> None:
    proc = chart.helm(
        release.kubeconfig, "test", chart.RELEASE, "--namespace", chart.NAMESPACE,
        "--timeout", "120s",
    )  # fmt: skip
    assert "Phase:          Succeeded" in proc.stdout or "Succeeded" in proc.stdout, proc.stdout


def test_upgrade_with_another_slot_count_rolls_the_device_plugin_and_allocatable_follows(
    release: Kube,
) -> None:
    before = {p.metadata.uid for p in release.component_pods("device-plugin") if p.metadata}
    try:
        chart.install(release.kubeconfig, {"devicePlugin.deviceCount": 5}, upgrade=True)
        release.wait_release_ready()
        after = {p.metadata.uid for p in release.component_pods("device-plugin") if p.metadata}
        assert after and not after & before, "the DaemonSet rolled its pod"
        wait_until(lambda: release.allocatable(FRONTEND_NODE, GPU) == "5", "5 slots")
    finally:
        chart.install(release.kubeconfig, upgrade=True)
        release.wait_release_ready()
    wait_until(lambda: release.allocatable(FRONTEND_NODE, GPU) == DEFAULT_SLOTS, "16 slots again")


def test_backend_loss_evicts_its_pods_and_their_replacements_connect_to_the_new_backend(
    release: Kube,
) -> None:
    chart.install(release.kubeconfig, {"controller.onBackendLoss": "evict",
                                        "controller.backendLossGraceSeconds": 1}, upgrade=True)  # fmt: skip
    try:
        release.wait_release_ready()
        (trainer,) = load_standin_examples("multi-container-deployment.yaml", THREADS)
        trainer["metadata"]["namespace"] = "loss"
        release.ensure_namespace("loss")
        release.apply([trainer])
        pods = example_pods(release, trainer)
        lost_ip = pods[0].backend.partition(":")[0]
        (lost,) = [p for p in release.backend_pods() if p.status and p.status.podIP == lost_ip]
        assert lost.metadata is not None
        release.kubectl("delete", "pod", "-n", chart.NAMESPACE, lost.metadata.name or "")

        def replaced() -> list[Pod] | None:
            current = [
                p
                for p in release.client.list(Pod, namespace="loss")
                if is_ready(p) and p.metadata and not p.metadata.deletionTimestamp
            ]
            old = {p.name for p in pods if p.backend.startswith(lost_ip + ":")}
            if any(p.metadata and p.metadata.name in old for p in current):
                return None
            return current if len(current) == len(pods) else None

        wait_until(replaced, "the lost backend's pods evicted and replaced", 180)
        backends = {p.status.podIP for p in release.backend_pods() if p.status}
        assert lost_ip not in backends or len(backends) == 2
        for pod in example_pods(release, trainer):
            ip = pod.backend.partition(":")[0]
            assert ip != lost_ip or ip in backends
            connections = [c for c in release.backend_connections(ip) if c["peer"][0] == pod.ip]
            wait_until(
                lambda ip=ip, pod=pod: (
                    len([c for c in release.backend_connections(ip) if c["peer"][0] == pod.ip])
                    >= THREADS
                ),
                f"{pod.name} connected to {ip}",
            )
            del connections
    finally:
        release.kubectl("delete", "namespace", "loss", "--wait=false", check=False)
        chart.install(release.kubeconfig, upgrade=True)
        release.wait_release_ready()


def test_uninstall_leaves_no_object_socket_or_cdi_spec_of_ours(release: Kube) -> None:
    chart.uninstall(release.kubeconfig)
    try:

        def objects_left() -> list[str]:
            listed = release.kubectl(
                "get", "all,cm,secret,sa,role,rolebinding,clusterrole,clusterrolebinding,"
                "mutatingwebhookconfiguration,networkpolicy,pdb,lease",
                "-A", "-l", f"app.kubernetes.io/instance={chart.RELEASE}", "-o", "json",
            ).stdout  # fmt: skip
            return [f"{o['kind']}/{o['metadata']['name']}" for o in json.loads(listed)["items"]]

        # Pods terminate after `helm uninstall --wait` has returned: wait for them to be gone.
        wait_until(lambda: not objects_left(), "no object of the release left")

        def node_files_gone() -> bool:
            for name in NODE_NAMES:
                node = release.cluster.nodes[name]
                found = node.shell(f"ls {PLUGIN_SOCKET} {CDI_SPEC_DIR}/* 2>/dev/null || true")
                if found.strip():
                    return False
            return True

        wait_until(node_files_gone, "no device-plugin socket or CDI spec left on the nodes")
    finally:
        chart.install(release.kubeconfig)
        release.wait_release_ready()
