"""The CDI spec file: written before every registration, repaired while we run, removed on stop
only when no container on the node holds one of our devices.

The container runtime resolves a container's CDI device names against this file each time it
creates the container, and the kubelet re-uses a pod's recorded allocation when a container
restarts, even while no plugin runs. So the spec must exist as long as any pod on the node holds
our devices, which can outlive this process, a rollout, even an uninstall. A SIGTERM does not say
whether an uninstall, a rollout or a node drain sends it, so on stop the plugin asks the kubelet
(PodResources ``List``, see ``podresources``) instead, once its own socket is gone, so that no
allocation can slip in between the answer and the removal:

- no container holds one of our devices: the file is removed. After an uninstall nothing of ours
  is left; in a rollout the next plugin writes it again before it registers, and no container
  can be given our devices in between (the kubelet allocates only through a registered plugin).
- a container holds one: the file is kept, whatever stops us. A rollout or a restart finds it in
  place; after an uninstall it stays until an administrator removes it once those pods are gone
  (it grants nothing: environment variables only, no device nodes; ``CDI_DIR`` is usually on
  tmpfs, gone at the next reboot).
- the kubelet cannot be asked (no socket, an error, no answer in 2 s): kept, and the log says why.

A missing or altered file is noticed by reading it every ``CHECK_SECONDS`` (2 KB for 16 slots, from
the page cache): plain code, no native inotify binding, and it also sees a replaced or re-mounted
directory, which an inotify watch on the old directory would miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from gvirtus_kai_device_plugin import files

log = logging.getLogger(__name__)

CHECK_SECONDS = 1.0


class CdiSpecFile:
    """Keeps ``path`` holding exactly ``document`` (as ``files.write_atomically`` writes it)."""

    def __init__(self, path: Path, document: dict[str, Any], repairs: Counter) -> None:
        self.path = path
        self.document = document
        self._expected = files.json_bytes(document)
        self._repairs = repairs
        self._written = False
        self._failing = False

    def problem(self) -> str | None:
        """Why the file on disk is not our spec, or None when it is."""
        try:
            # Non-blocking: opening a FIFO put in its place must not stall the event loop.
            with open(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
                mode = os.fstat(handle.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    return "not a regular file"
                content = handle.read(len(self._expected) + 1)
        except FileNotFoundError:
            return "missing"
        except OSError as error:
            return f"unreadable: {error.strerror or error}"
        if content != self._expected:
            return "content changed"
        if stat.S_IMODE(mode) != files.PUBLIC_FILE_MODE:
            return f"mode changed to {stat.S_IMODE(mode):o}"
        return None

    def ensure(self) -> None:
        """Write the spec unless the file already holds it; raises OSError when it cannot."""
        problem = self.problem()
        if problem is None:
            if not self._written:
                log.info("CDI spec already in place", extra={"path": str(self.path)})
            self._written = True
            self._failing = False
            return
        try:
            # The directory too may have been removed (a runtime does not need it between scans).
            self.path.parent.mkdir(parents=True, exist_ok=True)
            files.write_atomically(self.path, self.document)
        except OSError as error:
            if not self._failing:
                log.error(
                    "cannot write the CDI spec",
                    extra={"path": str(self.path), "reason": problem, "error": str(error)},
                )
            self._failing = True
            raise
        if self._written:
            # We wrote it before: someone or something removed or changed it since.
            self._repairs.inc()
            log.warning("CDI spec restored", extra={"path": str(self.path), "reason": problem})
        else:
            log.info("CDI spec written", extra={"path": str(self.path), "reason": problem})
        self._written = True
        self._failing = False

    def remove(self) -> None:
        """Remove the file (a missing one is fine); raises OSError when it cannot."""
        files.remove_quietly(self.path)
        self._written = False

    async def keep(self, check_seconds: float = CHECK_SECONDS) -> None:
        """Check and repair the file every ``check_seconds`` until cancelled."""
        while True:
            # A failure is logged by ensure() when it starts; the next round tries again.
            with contextlib.suppress(OSError):
                self.ensure()
            await asyncio.sleep(check_seconds)
