"""Regenerate the Python gRPC stubs of the kubelet APIs the plugin speaks from their protos.

``api.proto`` is the device plugin API (v1beta1), ``podresources.proto`` the PodResources API
(v1, its List RPC); both live in ``src/gvirtus_kai_device_plugin/api/``.

The stubs are committed (so installing the service needs no code generator) and a test regenerates
them into a temporary directory and fails when they differ, so they cannot go stale. Output depends
only on the proto file and the grpcio-tools version pinned in constraints.txt.

    python services/device-plugin/generate_stubs.py            # rewrite the committed stubs
    python services/device-plugin/generate_stubs.py --out DIR  # write them under DIR instead

protoc runs with ``src/`` as its include root, so the proto's path inside the include root is the
package path and the generated ``api_pb2_grpc`` imports ``gvirtus_kai_device_plugin.api.api_pb2``
(an absolute, package-qualified import) instead of a bare top-level ``api_pb2``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

SRC_ROOT = Path(__file__).resolve().parent / "src"
API_DIR = Path("gvirtus_kai_device_plugin") / "api"
PROTOS = ("api", "podresources")
GENERATED = tuple(
    f"{proto}{suffix}" for proto in PROTOS for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
)


def generate(out_root: Path) -> list[Path]:
    """Write the stubs under ``out_root/gvirtus_kai_device_plugin/api/`` and return their paths."""
    target = out_root / API_DIR
    target.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={SRC_ROOT}",
            f"--python_out={out_root}",
            f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}",
            *(str(SRC_ROOT / API_DIR / f"{proto}.proto") for proto in PROTOS),
        ]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    return [target / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SRC_ROOT, help="root to write the package into")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
