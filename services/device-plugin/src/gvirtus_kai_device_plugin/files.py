"""File system side effects: the CDI spec file and the start-up writability checks."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Readable by the container runtime, writable by us only.
PUBLIC_FILE_MODE = 0o644


def json_bytes(document: dict[str, Any]) -> bytes:
    """The exact bytes ``write_atomically`` writes for ``document`` (stable: keys sorted)."""
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    """Write JSON via a temp file in the same directory and a rename, so a runtime scanning the
    directory sees either the old file or the complete new one, never a partial write."""
    content = json_bytes(document)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, PUBLIC_FILE_MODE)
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def writability_problem(directory: Path, *, create: bool) -> str | None:
    """Why we cannot create files in ``directory``, or None when we can (checked by doing it)."""
    try:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        elif not directory.is_dir():
            return f"{directory} is not an existing directory"
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".gvirtus-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        return f"{directory} is not writable: {error.strerror or error}"
    return None
