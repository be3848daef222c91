"""The shell scripts the workflows call, run for real.

ci/package-chart.sh runs with the real helm binary. ci/kind-load-images.sh needs docker and kind,
which this machine lacks: stand-ins on PATH record their arguments, so the test checks which images
the script builds and loads, not that docker works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ci.buildfiles import REPO_ROOT

TOOLS_BIN = REPO_ROOT / ".tools" / "bin"
CHART_YAML = REPO_ROOT / "charts" / "gvirtus-kai" / "Chart.yaml"
VALUES_YAML = REPO_ROOT / "charts" / "gvirtus-kai" / "values.yaml"
# values.yaml key (dotted path) of each GVirtuS-KAI image -> the component in its image name.
COMPONENTS = {
    "webhook": "webhook",
    "labeler": "labeler",
    "devicePlugin": "device-plugin",
    "controller": "controller",
    "backend.agent": "backend-agent",
}
PREFIX = "registry.test/acme/gvirtus-kai"


def repository(values: dict[str, Any], key: str) -> str:
    """The image repository under the dotted values ``key``."""
    for part in key.split("."):
        values = values[part]
    return str(values["image"]["repository"])


def chart_app_version() -> str:
    chart: dict[str, Any] = yaml.safe_load(CHART_YAML.read_text())
    return str(chart["appVersion"])


@pytest.fixture
def helm_path() -> str:
    path = os.pathsep.join([str(TOOLS_BIN), os.environ.get("PATH", "")])
    helm = shutil.which("helm", path=path)
    if helm is None:
        pytest.fail("helm is missing; `make tools` installs it into .tools/bin")
    return path


def package(version: str, out: Path, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO_ROOT / "ci" / "package-chart.sh"), version, PREFIX, str(out)],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def packaged_file(archive: Path, name: str) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"gvirtus-kai/{name}")
        assert member is not None
        data: dict[str, Any] = yaml.safe_load(member.read())
    return data


def test_package_chart_sets_chart_and_app_version_from_the_tag(
    tmp_path: Path, helm_path: str
) -> None:
    result = package("v1.2.3-rc.1", tmp_path, helm_path)
    assert result.returncode == 0, result.stderr

    chart = packaged_file(tmp_path / "gvirtus-kai-1.2.3-rc.1.tgz", "Chart.yaml")

    assert (chart["version"], chart["appVersion"]) == ("1.2.3-rc.1", "1.2.3-rc.1")
    assert result.stdout.strip().splitlines()[-1] == str(tmp_path / "gvirtus-kai-1.2.3-rc.1.tgz")


def test_package_chart_points_our_images_at_the_release_registry_only(
    tmp_path: Path, helm_path: str
) -> None:
    original = yaml.safe_load(VALUES_YAML.read_text())
    assert package("v0.3.0", tmp_path, helm_path).returncode == 0

    values = packaged_file(tmp_path / "gvirtus-kai-0.3.0.tgz", "values.yaml")

    assert {key: repository(values, key) for key in COMPONENTS} == {
        key: f"{PREFIX}-{component}" for key, component in COMPONENTS.items()
    }
    assert values["backend"]["image"] == original["backend"]["image"]


def test_the_chart_defaults_to_the_images_a_release_of_the_upstream_repository_pushes() -> None:
    # release.yaml packages with IMAGE_PREFIX ghcr.io/<owner>/gvirtus-kai; the chart's home
    # repository is the owner whose images the defaults name.
    chart = yaml.safe_load(CHART_YAML.read_text())
    owner = chart["home"].removeprefix("https://github.com/").split("/")[0]
    values = yaml.safe_load(VALUES_YAML.read_text())
    assert {key: repository(values, key) for key in COMPONENTS} == {
        key: f"ghcr.io/{owner}/gvirtus-kai-{component}" for key, component in COMPONENTS.items()
    }


def test_package_chart_leaves_the_working_tree_untouched(tmp_path: Path, helm_path: str) -> None:
    before = (REPO_ROOT / "charts/gvirtus-kai/values.yaml").read_bytes()

    assert package("0.3.1", tmp_path, helm_path).returncode == 0

    assert (REPO_ROOT / "charts/gvirtus-kai/values.yaml").read_bytes() == before


@pytest.mark.parametrize("tag", ["latest", "v1.2", "v01.2.3", "release-1.2.3"])
def test_package_chart_refuses_a_tag_that_is_not_semver(
    tag: str, tmp_path: Path, helm_path: str
) -> None:
    result = package(tag, tmp_path, helm_path)

    assert result.returncode == 2
    assert "not a SemVer 2 version" in result.stderr
    assert list(tmp_path.iterdir()) == []


RECORDER = """#!/usr/bin/env bash
printf '%s %s\\n' "$(basename "$0")" "$*" >>"$CALLS"
"""


def run_kind_load(tmp_path: Path, *args: str, **env: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "kind"):
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / "calls"
    subprocess.run(
        ["bash", str(REPO_ROOT / "ci" / "kind-load-images.sh"), *args],
        env={
            **os.environ,
            **env,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "CALLS": str(calls),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return calls.read_text().splitlines()


def expected_calls(cluster: str, repositories: dict[str, str], tag: str) -> list[str]:
    calls = []
    for component, repository in repositories.items():
        image = f"{repository}:{tag}"
        calls += [
            f"docker buildx build --load --file Dockerfile.{component} --tag {image} .",
            f"kind load docker-image --name {cluster} {image}",
        ]
    return calls


def test_kind_load_builds_and_loads_each_image_under_the_charts_default_name(
    tmp_path: Path,
) -> None:
    calls = run_kind_load(tmp_path, "ci-cluster")

    values = yaml.safe_load(VALUES_YAML.read_text())
    defaults = {component: repository(values, key) for key, component in COMPONENTS.items()}
    assert calls == expected_calls("ci-cluster", defaults, chart_app_version())


def test_kind_load_takes_prefix_and_tag_from_the_environment(tmp_path: Path) -> None:
    calls = run_kind_load(tmp_path, IMAGE_PREFIX="example/gk", IMAGE_TAG="dev")

    named = {component: f"example/gk-{component}" for component in COMPONENTS.values()}
    assert calls == expected_calls("kind", named, "dev")
