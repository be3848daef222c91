"""The gvirtus-kai chart installed on the real nodes with the real ``helm``, from the working tree.

Default values except the image references (``local-images.yaml``): the project's images built
here (``make images``, present in each node's containerd, so ``pullPolicy: Never``) and, as the
GVirtuS backend, the stand-in backend image.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.cluster.controlplane import ROOT, TOOLS_BIN
from tests.cluster.release import set_json_args

CHART = ROOT / "charts" / "gvirtus-kai"
RELEASE = "gvirtus-kai"
NAMESPACE = "gvirtus-system"
# The local images (see the file); the only values the tier sets beyond a test's own.
LOCAL_IMAGES = Path(__file__).with_name("local-images.yaml")


def helm(
    kubeconfig: Path, *args: str, check: bool = True, timeout: float = 400.0
) -> subprocess.CompletedProcess[str]:
    home = kubeconfig.parent / "helm"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    proc = subprocess.run(
        [str(TOOLS_BIN / "helm"), *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def install(
    kubeconfig: Path, values: Mapping[str, Any] | None = None, *, upgrade: bool = False
) -> subprocess.CompletedProcess[str]:
    """``helm install`` (or ``upgrade``) with the local images plus ``values``, waiting until
    every workload of the release is ready."""
    action = ["upgrade", RELEASE] if upgrade else ["install", RELEASE]
    return helm(
        kubeconfig,
        *action, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
        "--wait", "--timeout", "300s",
        "--values", str(LOCAL_IMAGES), *set_json_args(values or {}),
    )  # fmt: skip


def uninstall(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return helm(
        kubeconfig, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "120s"
    )


def installed(kubeconfig: Path) -> bool:
    return (
        helm(kubeconfig, "status", RELEASE, "--namespace", NAMESPACE, check=False).returncode == 0
    )
