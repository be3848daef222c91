"""``make e2e-nodes``: the e2e suite (``tests/e2e``) against real nodes on this machine.

Brings up an instance of the real-node cluster of its own, without backends: the suite is written
for any cluster of a user's, a kind cluster without GPUs included, and checks that a GVirtuS pod
waits while no backend is ready. No chart either: the suite installs it into a namespace of its
own, with the local images of ``local-images.yaml``. It runs the suite with that
cluster's KUBECONFIG, removes the cluster, and fails when the suite failed or skipped anything:
here every e2e test must run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from tests.cluster.controlplane import ROOT, TOOLS_BIN
from tests.node.chart import LOCAL_IMAGES
from tests.node.cluster import up

INSTANCE = 2


def main() -> int:
    cluster = up(INSTANCE, backends=False)
    report = cluster.instance.workdir / "e2e-junit.xml"
    try:
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "E2E_VALUES": str(LOCAL_IMAGES),
            "PATH": f"{TOOLS_BIN}:{os.environ['PATH']}",
        }
        suite = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/e2e", "-m", "e2e", "-v",
             "-p", "no:cacheprovider", f"--junitxml={report}"],
            cwd=ROOT, env=env, check=False,
        )  # fmt: skip
        skipped = sum(int(s.get("skipped", 0)) for s in ET.parse(report).iter("testsuite"))  # noqa: S314 - our own report
    finally:
        cluster.stop()
    if suite.returncode == 0 and skipped:
        print(f"e2e: {skipped} test(s) skipped on real nodes; every one must run", file=sys.stderr)
        return 1
    return suite.returncode


if __name__ == "__main__":
    sys.exit(main())
