"""GitHub Actions workflows: what actionlint cannot know about this repository.

actionlint (run by `make lint`) checks syntax, expressions and the shell in `run:` blocks; these
tests check that the workflows call things that exist here and keep their permissions tight.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ci.buildfiles import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
PINNED_REF = re.compile(r"^(?:v\d+(?:\.\d+){0,2}|[0-9a-f]{40})$")
MAKE_CALL = re.compile(r"\bmake\s+([a-z0-9][a-z0-9_.-]*)")
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:ci|charts|tests)/[\w./-]*\w|Dockerfile\.(?:\$\{\{ *matrix\.\w+ *\}\}|[\w-]+))"
)
RELEASE_PLATFORMS = {"linux/amd64", "linux/arm64"}
COMPONENTS = {"webhook", "labeler", "device-plugin", "controller", "backend-agent"}


def load(name: str) -> dict[Any, Any]:
    workflow: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    return workflow


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the bare key `on` as the boolean True.
    found: dict[str, Any] = workflow["on"] if "on" in workflow else workflow[True]
    return found


def steps(workflow: dict[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Steps of every job (a job that calls a reusable workflow has none)."""
    return [
        (job_id, step) for job_id, job in workflow["jobs"].items() for step in job.get("steps", [])
    ]


def makefile_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z0-9][a-z0-9_.-]*):(?!=)", text, flags=re.MULTILINE))


def matrix_values(job: dict[str, Any], key: str) -> list[str]:
    values: list[str] = job.get("strategy", {}).get("matrix", {}).get(key, [])
    return values


def expand_matrix(text: str, job: dict[str, Any]) -> list[str]:
    """`text` once per matrix value when it uses `${{ matrix.<key> }}`, else as it is."""
    match = re.search(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", text)
    if match is None:
        return [text]
    return [text.replace(match.group(0), value) for value in matrix_values(job, match.group(1))]


def all_workflows() -> list[str]:
    return sorted(path.name for path in WORKFLOWS.glob("*.y*ml"))


def runs_make(job: dict[str, Any]) -> bool:
    return any(MAKE_CALL.search(step.get("run", "")) for step in job.get("steps", []))


def jobs_running_make() -> list[tuple[str, str]]:
    """(workflow, job) of every job with a step that calls make: only these are checked for
    make's needs, so a workflow without make is not counted as passing."""
    return [
        (name, job_id)
        for name in all_workflows()
        for job_id, job in load(name)["jobs"].items()
        if runs_make(job)
    ]


def test_the_ci_and_release_workflows_exist() -> None:
    assert all_workflows() == ["ci.yaml", "release.yaml"]


@pytest.mark.parametrize(("name", "job_id"), jobs_running_make())
def test_every_make_call_names_a_makefile_target(name: str, job_id: str) -> None:
    targets = makefile_targets()
    job = load(name)["jobs"][job_id]
    calls = [target for step in job["steps"] for target in MAKE_CALL.findall(step.get("run", ""))]

    assert [call for call in calls if call not in targets] == []


@pytest.mark.parametrize("name", all_workflows())
def test_every_repository_path_a_step_mentions_exists(name: str) -> None:
    workflow = load(name)
    mentioned: list[str] = []
    for job_id, step in steps(workflow):
        texts = [step.get("run", ""), *map(str, (step.get("with") or {}).values())]
        for text in texts:
            for path in REPO_PATH.findall(text):
                mentioned += expand_matrix(path, workflow["jobs"][job_id])

    assert mentioned, "the pattern should find the scripts and Dockerfiles the steps use"
    assert [path for path in mentioned if not (REPO_ROOT / path).exists()] == []


@pytest.mark.parametrize("name", all_workflows())
def test_every_action_is_pinned_to_a_release_tag_or_commit(name: str) -> None:
    refs = [step["uses"] for _, step in steps(load(name)) if "uses" in step]

    assert refs
    assert [ref for ref in refs if not PINNED_REF.match(ref.rpartition("@")[2])] == []


@pytest.mark.parametrize("name", all_workflows())
def test_the_default_token_can_only_read_the_repository(name: str) -> None:
    assert load(name)["permissions"] == {"contents": "read"}


def test_ci_jobs_never_get_write_permissions() -> None:
    jobs = load("ci.yaml")["jobs"]

    assert [job_id for job_id, job in jobs.items() if "permissions" in job] == []


def test_release_grants_write_permissions_only_to_the_jobs_that_publish() -> None:
    jobs = load("release.yaml")["jobs"]
    writes = {
        job_id: [scope for scope, level in sorted(job["permissions"].items()) if level == "write"]
        for job_id, job in jobs.items()
        if "permissions" in job
    }

    assert writes == {"images": ["packages"], "chart": ["contents", "packages"]}


def test_ci_runs_on_pushes_pull_requests_and_release_calls_and_cancels_superseded_runs() -> None:
    workflow = load("ci.yaml")

    assert set(triggers(workflow)) == {"push", "pull_request", "workflow_call"}
    assert workflow["concurrency"]["cancel-in-progress"] is True
    assert "github.ref" in workflow["concurrency"]["group"]
    # Called from release.yaml, github.workflow is the caller's name: a group built from it would
    # equal the caller's own group and the two runs would wait on each other.
    assert "github.workflow" not in workflow["concurrency"]["group"]


def test_release_publishes_nothing_before_the_whole_ci_passes() -> None:
    jobs = load("release.yaml")["jobs"]
    (checks,) = [job_id for job_id, job in jobs.items() if "uses" in job]

    assert jobs[checks]["uses"] == "./.github/workflows/ci.yaml"
    assert (WORKFLOWS / "ci.yaml").is_file()
    publishing = [job_id for job_id, job in jobs.items() if "permissions" in job]
    assert publishing
    for job_id in publishing:
        assert needs_transitively(jobs, job_id) >= {checks}, job_id


def needs_transitively(jobs: dict[str, Any], job_id: str) -> set[str]:
    needs = jobs[job_id].get("needs", [])
    direct = {needs} if isinstance(needs, str) else set(needs)
    return direct.union(*(needs_transitively(jobs, need) for need in direct))


def test_release_runs_only_for_version_tags() -> None:
    assert triggers(load("release.yaml")) == {"push": {"tags": ["v*"]}}


@pytest.mark.parametrize(("name", "job_id"), [("release.yaml", "images"), ("ci.yaml", "images")])
def test_image_jobs_build_every_component_for_amd64_and_arm64(name: str, job_id: str) -> None:
    job = load(name)["jobs"][job_id]
    builds = [step for step in job["steps"] if step.get("uses", "").startswith("docker/build-push")]

    assert set(matrix_values(job, "component")) == COMPONENTS
    assert len(builds) == 1
    assert set(builds[0]["with"]["platforms"].split(",")) == RELEASE_PLATFORMS
    assert builds[0]["with"]["file"] == "Dockerfile.${{ matrix.component }}"


def test_chart_testing_job_lints_installs_and_runs_the_e2e_suite_in_that_order() -> None:
    job = load("ci.yaml")["jobs"]["chart-testing"]
    runs = [step.get("run", "") for step in job["steps"]]

    def position(fragment: str) -> int:
        hits = [i for i, run in enumerate(runs) if fragment in run]
        assert hits, f"no step runs {fragment!r}"
        return hits[0]

    order = [
        position("ct lint --config ci/ct.yaml"),
        position("ci/kind-load-images.sh"),
        position("ci/install-cert-manager.sh"),
        position("ct install --config ci/ct.yaml"),
        position("make e2e"),
    ]
    assert order == sorted(order)


def test_kind_cluster_comes_from_the_repository_config() -> None:
    job = load("ci.yaml")["jobs"]["chart-testing"]
    kind = [step for step in job["steps"] if step.get("uses", "").startswith("helm/kind-action")]

    assert len(kind) == 1
    assert kind[0]["with"]["config"] == "ci/kind-config.yaml"
    assert Path(REPO_ROOT / kind[0]["with"]["config"]).is_file()


def _released_name(text: str, workflow: dict[str, Any], owner: str, component: str = "") -> str:
    """A shell word of release.yaml with its variables as a release of `owner` sets them."""
    values = {
        "REGISTRY": workflow["env"]["REGISTRY"],
        "GITHUB_REPOSITORY_OWNER,,": owner,
        "owner": owner,
        "OWNER": owner,
        "COMPONENT": component,
    }
    return re.sub(r"\$\{([A-Za-z_,]+)\}", lambda m: values[m.group(1)], text)


def _chart(name: str) -> dict[str, Any]:
    chart: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "charts" / "gvirtus-kai" / name).read_text()
    )
    return chart


def _upstream_owner() -> str:
    return str(_chart("Chart.yaml")["home"]).removeprefix("https://github.com/").split("/")[0]


def test_released_images_are_the_images_the_chart_defaults_to() -> None:
    workflow = load("release.yaml")
    job = workflow["jobs"]["images"]
    (naming,) = [s["run"] for s in job["steps"] if "image=" in s.get("run", "")]
    pattern = re.search(r'image=([^"\s]+)"', naming)
    assert pattern, naming
    values = _chart("values.yaml")
    keys = {
        "webhook": ("webhook",),
        "labeler": ("labeler",),
        "device-plugin": ("devicePlugin",),
        "controller": ("controller",),
        "backend-agent": ("backend", "agent"),
    }
    owner = _upstream_owner()
    for component in matrix_values(job, "component"):
        section = values
        for key in keys[component]:
            section = section[key]
        expected = section["image"]["repository"]
        assert _released_name(pattern[1], workflow, owner, component) == expected


def test_the_packaged_chart_points_at_the_released_images() -> None:
    workflow = load("release.yaml")
    (package,) = [s["run"] for _, s in steps(workflow) if "ci/package-chart.sh" in s.get("run", "")]
    prefix = re.search(r'package-chart\.sh "\$GITHUB_REF_NAME" "([^"]+)"', package)
    assert prefix, package
    owner = _upstream_owner()
    webhook = _chart("values.yaml")["webhook"]["image"]["repository"]
    # ci/package-chart.sh names each image <prefix>-<component>.
    assert f"{_released_name(prefix[1], workflow, owner)}-webhook" == webhook


def test_the_chart_is_pushed_where_the_readme_installs_it_from() -> None:
    workflow = load("release.yaml")
    (push,) = [s["run"] for _, s in steps(workflow) if "helm push" in s.get("run", "")]
    target = re.search(r'helm push "\$PACKAGE" "([^"]+)"', push)
    assert target, push
    chart_ref = f"{_released_name(target[1], workflow, _upstream_owner())}/gvirtus-kai"
    assert f"helm install gvirtus-kai {chart_ref}" in (REPO_ROOT / "README.md").read_text()


GO_MODULE = "ci/tools/go.mod"


@pytest.mark.parametrize(("name", "job_id"), jobs_running_make())
def test_every_job_that_runs_make_installs_go_from_the_tools_module_first(
    name: str, job_id: str
) -> None:
    # make builds helm, kubectl and the control plane from ci/tools with the Go toolchain.
    job_steps = load(name)["jobs"][job_id]["steps"]
    make_at = [i for i, step in enumerate(job_steps) if MAKE_CALL.search(step.get("run", ""))]
    go_at = [
        i
        for i, step in enumerate(job_steps)
        if step.get("uses", "").startswith("actions/setup-go@")
    ]
    assert go_at, "no actions/setup-go step"
    assert go_at[0] < make_at[0], "setup-go comes after the first make"
    settings = job_steps[go_at[0]]["with"]
    assert settings["go-version-file"] == GO_MODULE
    assert settings["cache-dependency-path"] == GO_MODULE.replace("go.mod", "go.sum")
    assert settings.get("cache", True) is True  # modules and build cache between runs
