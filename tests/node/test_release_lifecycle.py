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
from tests.node.workloads import RunningPod, all_connected, example_pods, load_standin_examples

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

        def rolled() -> bool:
            pods = [p for p in release.component_pods("device-plugin") if p.metadata]
            uids = {p.metadata.uid for p in pods}  # type: ignore[union-attr]
            return bool(uids) and not uids & before and all(is_ready(p) for p in pods)

        wait_until(rolled, "the DaemonSet to roll its pod")
        wait_until(lambda: release.allocatable(FRONTEND_NODE, GPU) == "5", "5 slots")
    finally:
        chart.install(release.kubeconfig, upgrade=True)
        release.wait_release_ready()
    wait_until(lambda: release.allocatable(FRONTEND_NODE, GPU) == DEFAULT_SLOTS, "16 slots again")


def test_backend_loss_evicts_its_pods_and_their_replacements_connect_to_the_new_backend(
    release: Kube,
) -> None:
    release.remove_gvirtus_workloads()  # earlier tests' pods would fill the backends
    # One pod per backend, so the evicted pod's replacement has to wait for the new backend.
    values = {
        "controller.onBackendLoss": "evict",
        "controller.backendLossGraceSeconds": 1,
        "controller.maxPodsPerBackend": 1,
    }
    chart.install(release.kubeconfig, values, upgrade=True)
    try:
        release.wait_release_ready()
        (trainer,) = load_standin_examples("multi-container-deployment.yaml", THREADS)
        trainer["metadata"]["namespace"] = "loss"
        release.ensure_namespace("loss")
        release.apply([trainer])
        pods = example_pods(release, trainer)
        assert len({p.backend for p in pods}) == 2, "one pod on each backend"
        victim, survivor = pods
        lost_ip = victim.backend.partition(":")[0]
        (lost,) = [p for p in release.backend_pods() if p.status and p.status.podIP == lost_ip]
        assert lost.metadata is not None
        assert lost.spec is not None
        release.kubectl("delete", "pod", "-n", chart.NAMESPACE, lost.metadata.name or "")

        def new_backend() -> str | None:
            for pod in release.backend_pods():
                if pod.spec and pod.spec.nodeName == lost.spec.nodeName:  # type: ignore[union-attr]
                    ip = pod.status.podIP if pod.status else None
                    return ip if ip and ip != lost_ip else None
            return None

        new_ip = wait_until(new_backend, "the DaemonSet's new backend pod, Ready")

        def replaced() -> list[RunningPod] | None:
            current = example_pods(release, trainer)
            names = {p.name for p in current}
            return current if victim.name not in names and survivor.name in names else None

        current = wait_until(replaced, "the evicted pod replaced", 180)
        (replacement,) = [p for p in current if p.name != survivor.name]
        assert replacement.backend == f"{new_ip}:9999"
        wait_until(
            all_connected(release, replacement, new_ip, THREADS), "the replacement's connections"
        )
    finally:
        release.kubectl("delete", "namespace", "loss", "--wait=false", check=False)
        chart.install(release.kubeconfig, upgrade=True)
        release.wait_release_ready()


def gpu_pods(kube: Kube) -> list[str]:
    """Pods on the frontend node that hold one of the device plugin's virtual GPUs."""
    return [
        f"{p.metadata.namespace}/{p.metadata.name}"
        for p in kube.client.list(Pod, namespace="*", fields={"spec.nodeName": FRONTEND_NODE})
        if p.metadata is not None and p.spec is not None
        for c in p.spec.containers
        if GPU in ((c.resources.limits or {}) if c.resources else {})
    ]


def test_uninstall_leaves_no_object_socket_or_cdi_spec_of_ours(release: Kube) -> None:
    # An operator uninstalls once the GVirtuS workloads are gone: a pod still holding a virtual
    # GPU keeps the CDI spec on its node (its container may restart and need it).
    release.remove_gvirtus_workloads()
    wait_until(lambda: not gpu_pods(release), "no pod holding a virtual GPU")
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
