"""The service images are right by construction: what each Dockerfile must and must not do.

No container engine runs here; these checks read the Dockerfiles and the build context filter.
The builder stage itself is replayed in test_image_dependencies.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib

import pytest

from tests.ci.buildfiles import (
    REPO_ROOT,
    DockerIgnore,
    Stage,
    arg_defaults,
    copy_sources,
    global_args,
    parse_dockerfile,
    resolve_base,
)

# Dockerfile suffix -> the service package it builds.
IMAGES = {
    "webhook": "webhook",
    "labeler": "labeler",
    "device-plugin": "device-plugin",
    "controller": "controller",
    "backend-agent": "backend-agent",
}
EXACT_VERSION_TAG = re.compile(
    r"^[a-z0-9][a-z0-9._/-]*:\d+\.\d+\.\d+(?:-[a-z0-9.-]+)?(?:@sha256:[0-9a-f]{64})?$"
)
NUMERIC_USER = re.compile(r"^(\d+)(?::(\d+))?$")
OFFICIAL_PYTHON = re.compile(r"^python:3\.11\.\d+-slim-bookworm$")
# What the build machine's pip needs inside the builder (ci/images/build.sh passes those set).
PACKAGE_INDEX_ARGS = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT"}


def dockerfile(image: str) -> str:
    return (REPO_ROOT / f"Dockerfile.{image}").read_text()


def stages(image: str) -> list[Stage]:
    return parse_dockerfile(dockerfile(image))


def console_scripts(service: str) -> dict[str, str]:
    pyproject = tomllib.loads((REPO_ROOT / "services" / service / "pyproject.toml").read_text())
    scripts: dict[str, str] = pyproject["project"].get("scripts", {})
    return scripts


def test_every_dockerfile_in_the_repository_is_one_of_the_service_images() -> None:
    found = {path.name.removeprefix("Dockerfile.") for path in REPO_ROOT.glob("Dockerfile.*")}

    assert found == set(IMAGES)


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_are_pinned_to_an_exact_version(image: str) -> None:
    args = global_args(dockerfile(image))
    for stage in stages(image):
        base = resolve_base(stage.base, args)
        assert EXACT_VERSION_TAG.match(base), f"{image}: base {base!r} is not pinned"


@pytest.mark.parametrize("image", IMAGES)
def test_base_is_a_build_argument_that_defaults_to_the_official_python_image(image: str) -> None:
    args = global_args(dockerfile(image))

    assert [stage.base for stage in stages(image)] == ["${PYTHON_IMAGE}"] * 2
    assert OFFICIAL_PYTHON.match(args["PYTHON_IMAGE"] or ""), args


@pytest.mark.parametrize("image", IMAGES)
def test_builder_calls_python3_which_debian_made_bases_have_too(image: str) -> None:
    commands = " ".join(run.arguments for run in stages(image)[0].all("RUN"))

    assert "python3 -m venv" in commands
    assert re.search(r"(^|[\s;&|])python\s", commands) is None, "Debian has no plain `python`"


@pytest.mark.parametrize("image", IMAGES)
def test_package_index_settings_are_arguments_of_the_builder_stage_only(image: str) -> None:
    builder, runtime = stages(image)
    builder_args = arg_defaults(builder.instructions)

    assert builder_args.keys() >= PACKAGE_INDEX_ARGS
    # Empty defaults: pip reads an empty value as unset, so unset ones need no build argument.
    assert all(builder_args[name] == "" for name in PACKAGE_INDEX_ARGS)
    assert not PACKAGE_INDEX_ARGS & set(global_args(dockerfile(image)))
    assert runtime.all("ARG") == []
    assert not [key for stage in (builder, runtime) for key in stage.env() if key in builder_args]


@pytest.mark.parametrize("image", IMAGES)
def test_builder_and_runtime_use_the_same_base_so_the_venv_interpreter_exists(image: str) -> None:
    builder, runtime = stages(image)

    assert builder.name == "builder"
    assert runtime.base == builder.base


@pytest.mark.parametrize("image", IMAGES)
def test_builder_installs_the_service_with_the_repository_pins_and_binary_wheels_only(
    image: str,
) -> None:
    builder = stages(image)[0]
    commands = " ".join(run.arguments for run in builder.all("RUN"))
    service = IMAGES[image]

    assert f"./services/common ./services/{service}" in commands
    assert commands.count("-c constraints.txt") == 2  # hatchling, then the service wheels
    assert "--only-binary=:all:" in commands
    assert "--no-build-isolation" in commands  # the pinned hatchling, not whatever is latest


@pytest.mark.parametrize("image", IMAGES)
def test_runtime_stage_only_copies_the_venv_and_runs_nothing(image: str) -> None:
    runtime = stages(image)[1]
    copies = [copy_sources(copy) for copy in runtime.all("COPY")]

    assert runtime.all("RUN") == []  # nothing installed, so no build tools in the image
    assert runtime.all("ADD") == []
    assert copies == [(["/opt/venv"], "builder")]


@pytest.mark.parametrize("image", IMAGES)
def test_runtime_user_is_numeric_and_not_root(image: str) -> None:
    users = stages(image)[1].all("USER")

    assert len(users) == 1
    match = NUMERIC_USER.match(users[0].arguments)
    assert match, f"USER {users[0].arguments!r} must be numeric so runAsNonRoot can verify it"
    assert int(match.group(1)) != 0
    assert match.group(2) is None or int(match.group(2)) != 0


@pytest.mark.parametrize("image", IMAGES)
def test_runtime_environment_disables_bytecode_writes_and_output_buffering(image: str) -> None:
    env = stages(image)[1].env()

    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_is_a_console_script_the_service_declares(image: str) -> None:
    entrypoints = stages(image)[1].all("ENTRYPOINT")
    assert len(entrypoints) == 1
    exec_form = json.loads(entrypoints[0].arguments)
    scripts = console_scripts(IMAGES[image])

    assert len(exec_form) == 1, "exec form with the script alone; arguments come from the chart"
    assert exec_form[0].removeprefix("/opt/venv/bin/") in scripts


def tracked_files(path: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", path], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    return out.split()


@pytest.mark.parametrize("image", IMAGES)
def test_build_context_holds_every_tracked_file_the_builder_copies(image: str) -> None:
    context = DockerIgnore((REPO_ROOT / ".dockerignore").read_text())
    sources = [
        source
        for copy in stages(image)[0].all("COPY")
        for source in copy_sources(copy)[0]
        if copy_sources(copy)[1] is None
    ]
    files = [file for source in sources for file in tracked_files(source)]

    assert any(file.endswith("pyproject.toml") for file in files)
    assert [file for file in files if not context.in_context(file)] == []


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".tools/bin/helm",
        ".git/HEAD",
        "tests/e2e/conftest.py",
        "charts/gvirtus-kai/values.yaml",
        "services/webhook/src/gvirtus_kai_webhook/__pycache__/server.cpython-311.pyc",
        "services/labeler/src/gvirtus_kai_labeler.egg-info/PKG-INFO",
        "services/common/build/lib/gvirtus_kai_common/logs.py",
        ".mypy_cache/3.11/cache.db",
    ],
)
def test_build_context_leaves_out_environments_history_tests_and_caches(path: str) -> None:
    context = DockerIgnore((REPO_ROOT / ".dockerignore").read_text())

    assert not context.in_context(path)
