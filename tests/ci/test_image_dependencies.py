"""Replays the images' builder stage without a container engine.

The builder builds each service wheel with the pinned hatchling (`pip wheel --no-deps
--no-build-isolation`) and installs the wheels with `-c constraints.txt`. Here the same wheels are
built, and everything they pull in on linux/amd64 and linux/arm64 must be pinned in
constraints.txt, so an image build resolves to exactly the versions the test suites ran with.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Iterable
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

from tests.ci.buildfiles import REPO_ROOT, read_constraints

SERVICES = ["webhook", "labeler", "device-plugin", "controller", "backend-agent"]
OWN_PREFIX = "gvirtus-kai-"
ARCHITECTURES = ["x86_64", "aarch64"]


def image_environment(machine: str) -> dict[str, str]:
    """Marker environment of the image's interpreter: CPython 3.11 on Linux."""
    env = {key: str(value) for key, value in default_environment().items()}
    env.update(
        {
            "sys_platform": "linux",
            "platform_system": "Linux",
            "os_name": "posix",
            "platform_machine": machine,
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "python_version": "3.11",
            "python_full_version": "3.11.14",
        }
    )
    return env


def applies(requirement: Requirement, extras: Iterable[str], environment: dict[str, str]) -> bool:
    if requirement.marker is None:
        return True
    return any(
        requirement.marker.evaluate({**environment, "extra": extra}) for extra in {"", *extras}
    )


def closure(roots: list[Requirement], environment: dict[str, str]) -> dict[NormalizedName, str]:
    """Installed versions of everything `roots` need in `environment`, found via this venv."""
    versions: dict[NormalizedName, str] = {}
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    pending = [(r, frozenset[str]()) for r in roots if applies(r, (), environment)]
    while pending:
        requirement, _ = pending.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{requirement.name} is needed on Linux but not installed in this venv")
        versions[name] = distribution.version
        for raw in distribution.requires or []:
            child = Requirement(raw)
            if applies(child, requirement.extras, environment):
                pending.append((child, frozenset()))
    return versions


def wheel_metadata(wheel: Path) -> tuple[list[Requirement], set[str]]:
    """Requires-Dist and console script names of a built wheel."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(archive.read(meta_name).decode())
        scripts: set[str] = set()
        entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        if entry_points:
            section = ""
            for line in archive.read(entry_points[0]).decode().splitlines():
                line = line.strip()
                if line.startswith("["):
                    section = line.strip("[]")
                elif section == "console_scripts" and "=" in line:
                    scripts.add(line.split("=", 1)[0].strip())
    return [Requirement(r) for r in meta.get_all("Requires-Dist") or []], scripts


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One wheel per service package, built the way the Dockerfiles build them."""
    out = tmp_path_factory.mktemp("wheels")
    packages = ["common", *SERVICES]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--wheel-dir", str(out),
         *(str(REPO_ROOT / "services" / p) for p in packages)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    built = {}
    for package in packages:
        distribution = f"gvirtus_kai_{package.replace('-', '_')}-"
        matches = list(out.glob(f"{distribution}*.whl"))
        assert len(matches) == 1, f"expected one wheel for {package}, found {matches}"
        built[package] = matches[0]
    return built


@pytest.fixture(scope="module")
def pins() -> dict[NormalizedName, str]:
    return read_constraints(REPO_ROOT / "constraints.txt")


@pytest.mark.parametrize("service", SERVICES)
def test_service_wheel_depends_on_the_common_package(service: str, wheels: dict[str, Path]) -> None:
    requirements, _ = wheel_metadata(wheels[service])

    assert "gvirtus-kai-common" in {canonicalize_name(r.name) for r in requirements}


@pytest.mark.parametrize("service", SERVICES)
def test_service_wheel_ships_the_console_scripts_its_image_runs(
    service: str, wheels: dict[str, Path]
) -> None:
    dockerfile = (REPO_ROOT / f"Dockerfile.{service}").read_text()
    _, scripts = wheel_metadata(wheels[service])

    assert scripts
    assert any(f'"/opt/venv/bin/{script}"' in dockerfile for script in scripts)


@pytest.mark.parametrize("machine", ARCHITECTURES)
@pytest.mark.parametrize("service", SERVICES)
def test_everything_the_image_installs_is_pinned_at_the_tested_version(
    service: str, machine: str, wheels: dict[str, Path], pins: dict[NormalizedName, str]
) -> None:
    environment = image_environment(machine)
    roots = [*wheel_metadata(wheels[service])[0], *wheel_metadata(wheels["common"])[0]]
    needed = {
        name: version
        for name, version in closure(roots, environment).items()
        if not name.startswith(OWN_PREFIX)
    }

    unpinned = sorted(name for name in needed if name not in pins)
    drifted = sorted(
        f"{name} {version} (pinned {pins[name]})"
        for name, version in needed.items()
        if pins.get(name, version) != version
    )
    assert unpinned == [], "add these to constraints.txt"
    assert drifted == [], "the venv differs from constraints.txt; run `make` to reinstall"


def test_the_builders_hatchling_and_its_dependencies_are_pinned(
    pins: dict[NormalizedName, str],
) -> None:
    needed = closure([Requirement("hatchling")], image_environment("x86_64"))

    assert sorted(name for name in needed if name not in pins) == []
    assert needed[canonicalize_name("hatchling")] == pins[canonicalize_name("hatchling")]
