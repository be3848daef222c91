"""kubectl and helm for the e2e suite: the one place that runs them and explains their failures.

Everything here is synchronous and small on purpose: an e2e failure should read as "this command,
this exit code, this output" or "waited this long for that, last saw this".
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
SKIP_REASON_NO_CLUSTER = "KUBECONFIG not set: e2e needs a real cluster"

# values.yaml key of each GVirtuS-KAI component -> the component in its image name.
IMAGE_COMPONENTS = {
    "webhook": "webhook",
    "labeler": "labeler",
    "devicePlugin": "device-plugin",
    "controller": "controller",
}

# app.kubernetes.io/component of the chart's `helm test` pods.
HELM_TEST_COMPONENT = "helm-test"

_OUTPUT_TAIL = 4000


def skip_reason(environ: Mapping[str, str]) -> str | None:
    """Why the suite cannot run here, or None when a cluster is configured."""
    if not environ.get("KUBECONFIG", "").strip():
        return SKIP_REASON_NO_CLUSTER
    return None


@dataclass(frozen=True)
class E2EConfig:
    """What the suite reads from the environment (see tests/e2e/README section of the report)."""

    kubectl: str
    helm: str
    chart: Path
    image_repository_prefix: str | None
    image_tag: str | None
    timeout_seconds: float
    values_files: tuple[Path, ...] = ()  # extra `helm install -f` files (E2E_VALUES, a,b)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> E2EConfig:
        return cls(
            kubectl=resolve_binary("kubectl", environ.get("KUBECTL"), environ),
            helm=resolve_binary("helm", environ.get("HELM"), environ),
            chart=Path(environ.get("E2E_CHART") or REPO_ROOT / "charts" / "gvirtus-kai"),
            image_repository_prefix=environ.get("E2E_IMAGE_REPOSITORY_PREFIX") or None,
            image_tag=environ.get("E2E_IMAGE_TAG") or None,
            timeout_seconds=float(environ.get("E2E_TIMEOUT_SECONDS") or 300),
            values_files=tuple(
                Path(item) for item in (environ.get("E2E_VALUES") or "").split(",") if item.strip()
            ),
        )


def resolve_binary(name: str, override: str | None, environ: Mapping[str, str]) -> str:
    """The override path when given (it must be executable), else `name` on the PATH."""
    if override:
        if not os.access(override, os.X_OK):
            raise FileNotFoundError(f"{name} override {override!r} is not an executable file")
        return override
    found = shutil.which(name, path=environ.get("PATH"))
    if found is None:
        raise FileNotFoundError(
            f"{name} is not on PATH; run `make tools` (installs it into .tools/bin) or set "
            f"{name.upper()} to its path"
        )
    return found


def image_value_overrides(prefix: str | None, tag: str | None) -> list[str]:
    """`--set` arguments pointing the GVirtuS-KAI images at `<prefix>-<component>` and/or a tag."""
    args: list[str] = []
    for values_key, component in IMAGE_COMPONENTS.items():
        if prefix:
            args += ["--set", f"{values_key}.image.repository={prefix.rstrip('-')}-{component}"]
        if tag:
            args += ["--set", f"{values_key}.image.tag={tag}"]
    return args


class CommandFailedError(RuntimeError):
    """A kubectl/helm call exited non-zero; the message carries the command and both streams."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"`{shlex.join(argv)}` exited with {returncode}\n"
            f"--- stderr ---\n{_tail(stderr)}\n--- stdout ---\n{_tail(stdout)}"
        )


@dataclass(frozen=True)
class Cli:
    """One command-line tool (kubectl or helm) with a default timeout per call."""

    binary: str
    timeout_seconds: float = 120

    def run(self, *args: str, stdin: str | None = None, timeout: float | None = None) -> str:
        """Runs the tool and returns its stdout; raises CommandFailedError on a non-zero exit."""
        argv = [self.binary, *args]
        limit = timeout if timeout is not None else self.timeout_seconds
        try:
            completed = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=limit, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandFailedError(
                argv, -1, _text(exc.stdout), f"timed out after {limit:g}s\n{_text(exc.stderr)}"
            ) from exc
        if completed.returncode != 0:
            raise CommandFailedError(argv, completed.returncode, completed.stdout, completed.stderr)
        return completed.stdout

    def succeeds(self, *args: str) -> bool:
        """Whether the call exits zero (for "does this still exist" questions)."""
        try:
            self.run(*args)
        except CommandFailedError:
            return False
        return True

    def json(self, *args: str, stdin: str | None = None) -> dict[str, Any]:
        """Runs the tool with `-o json` and parses the object it prints."""
        out = self.run(*args, "-o", "json", stdin=stdin)
        try:
            parsed = json.loads(out)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"`{shlex.join(args)}` printed no JSON: {_tail(out)}") from exc
        if not isinstance(parsed, dict):
            kind = type(parsed).__name__
            raise AssertionError(f"`{shlex.join(args)}` printed a JSON {kind}, not an object")
        return parsed


def run_helm_test(
    helm: Cli, kubectl: Cli, release: str, namespace: str, timeout_seconds: float
) -> str:
    """`helm test` of a release; when it fails, the error carries the test pods' logs.

    Not `helm test --logs`: the chart's test pod is deleted once it succeeds (`hook-succeeded`),
    and Helm releases without the fix for helm/helm#9098 fetch the logs only after that deletion,
    so a passing test fails with "unable to get pod logs ... not found". A failed test pod is
    kept, so its logs are read here with kubectl.
    """
    try:
        return helm.run(
            "test", release, "--namespace", namespace, "--timeout", f"{int(timeout_seconds)}s"
        )
    except CommandFailedError as failure:
        logs = helm_test_pod_logs(kubectl, release, namespace)
        raise CommandFailedError(
            failure.argv,
            failure.returncode,
            f"{failure.stdout}\n--- helm test pod logs ---\n{logs}",
            failure.stderr,
        ) from failure


def helm_test_pod_logs(kubectl: Cli, release: str, namespace: str) -> str:
    """Logs of the release's `helm test` pods, or why they could not be read."""
    selector = (
        f"app.kubernetes.io/instance={release},app.kubernetes.io/component={HELM_TEST_COMPONENT}"
    )
    try:
        return kubectl.run(
            "logs", "--namespace", namespace, "--selector", selector,
            "--all-containers", "--prefix", "--tail=200",
        )  # fmt: skip
    except CommandFailedError as exc:
        return f"(could not read them: {exc})"


def wait_until(
    probe: Callable[[], T],
    accept: Callable[[T], bool],
    *,
    what: str,
    timeout: float,
    interval: float = 2.0,
) -> T:
    """Calls `probe` until `accept` likes its result; returns that result.

    On timeout the AssertionError names what was awaited and the last value seen, which is
    usually the whole diagnosis.
    """
    deadline = time.monotonic() + timeout
    while True:
        observed = probe()
        if accept(observed):
            return observed
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last observed: "
                f"{_tail(repr(observed))}"
            )
        time.sleep(interval)


def _text(stream: str | bytes | None) -> str:
    if stream is None:
        return ""
    return stream.decode(errors="replace") if isinstance(stream, bytes) else stream


def _tail(text: str) -> str:
    text = text.strip()
    if len(text) <= _OUTPUT_TAIL:
        return text
    return f"[... {len(text) - _OUTPUT_TAIL} characters cut ...]\n{text[-_OUTPUT_TAIL:]}"
