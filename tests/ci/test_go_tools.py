"""ci/tools pins one consistent Kubernetes release and builds what the Makefile asks for."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GO_TOOLS = REPO_ROOT / "ci" / "tools"


def go_mod() -> str:
    return (GO_TOOLS / "go.mod").read_text()


def required_version(module: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)", go_mod(), re.MULTILINE)
    assert match, f"{module} is not required in ci/tools/go.mod"
    return match.group(1)


def test_every_staging_module_is_replaced_by_the_release_of_the_pinned_kubernetes() -> None:
    # k8s.io/kubernetes v1.N.P publishes its staging modules as v0.N.P; any other version would
    # build a control plane out of parts from different releases.
    kubernetes = required_version("k8s.io/kubernetes")
    staging = "v0." + kubernetes.removeprefix("v1.")
    pattern = r"^\s*(k8s\.io/[\w-]+) => (k8s\.io/[\w-]+) (v\S+)$"
    replaced = re.findall(pattern, go_mod(), re.MULTILINE)
    assert len(replaced) > 20
    for old, new, version in replaced:
        assert old == new, f"{old} is replaced by another module ({new})"
        assert version == staging, f"{old} is pinned to {version}, not {staging}"


def test_build_script_knows_every_tool_the_module_imports() -> None:
    imports = re.findall(r'_ "([^"]+)"', (GO_TOOLS / "tools.go").read_text())
    script = (GO_TOOLS / "build.sh").read_text()
    assert len(imports) == 6
    for package in imports:
        assert package in script or package.rsplit("/", 1)[0] + "/$name" in script, package


def test_makefile_builds_the_control_plane_helm_and_kubectl() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        assert name in makefile.split("CLUSTER_BINS :=")[1].splitlines()[0]
    assert "helm kubectl)" in makefile


def test_pins_carry_no_download_locations() -> None:
    for name in ("go.mod", "go.sum"):
        text = (GO_TOOLS / name).read_text()
        assert "://" not in text, f"ci/tools/{name} names a download location"
