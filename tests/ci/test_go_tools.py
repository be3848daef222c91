"""ci/tools pins one consistent Kubernetes release (and, in ci/tools/node, the container runtime
and CNI plugins) and builds what the Makefile asks for."""

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


def makefile_tools() -> set[str]:
    """Every tool name the Makefile has ci/tools/build.sh build (GO_BINS and NODE_BINS)."""
    makefile = (REPO_ROOT / "Makefile").read_text()

    def value(variable: str) -> str:
        return makefile.split(f"\n{variable}", 1)[1].split(":=", 1)[1].splitlines()[0].strip()

    names: set[str] = set()
    for variable in ("GO_BINS", "NODE_BINS"):
        text = value(variable).removeprefix("$(addprefix $(TOOLS)/,").removesuffix(")")
        text = text.replace("$(filter-out $(ASSET_BINS),$(CLUSTER_BINS))", value("CLUSTER_BINS"))
        names |= set(text.split())
    return names


def module_imports() -> list[str]:
    return [
        package
        for tools in (GO_TOOLS / "tools.go", GO_TOOLS / "node" / "tools.go")
        for package in re.findall(r'_ "([^"]+)"', tools.read_text())
    ]


def test_the_makefile_builds_every_tool_the_modules_pin() -> None:
    names = {name.removeprefix("cni/") for name in makefile_tools()}
    for package in module_imports():
        tool = "etcd" if package.startswith("go.etcd.io/etcd/") else package.rsplit("/", 1)[-1]
        assert tool in names, f"{package} is pinned but the Makefile never builds it"


def test_build_script_has_a_recipe_for_every_tool_the_makefile_asks_for() -> None:
    script = (GO_TOOLS / "build.sh").read_text()
    arms = {
        word.strip()
        for line in re.findall(r"^\s+([\w/ |-]+)\)", script, re.MULTILINE)
        for word in line.split("|")
    }
    for name in makefile_tools():
        assert name in arms, f"build.sh has no recipe for {name}"


def test_pins_carry_no_download_locations() -> None:
    for module in (GO_TOOLS, GO_TOOLS / "node"):
        for name in ("go.mod", "go.sum"):
            text = (module / name).read_text()
            assert "://" not in text, f"{module}/{name} names a download location"
