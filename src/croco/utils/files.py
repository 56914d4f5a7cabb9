"""Writing files so that a reader never sees half of one: a temporary file in the target folder, then a rename."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "remove_stale_temporaries"]


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block ends without an exception the file is fsynced and
    renamed onto ``path`` (atomic on POSIX), otherwise it is removed and ``path`` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_TMP_SUFFIX = re.compile(r"\.tmp-(\d+)(\..*)?$")


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temporary files (``*.tmp-<pid>``, ``*.tmp-<pid>.<part>``) of processes that no longer run on
    this machine, as ``atomic_output`` and the shard writer leave them when killed mid-write; returns them.
    Files of live processes (a concurrent writer) are kept."""
    from croco.utils.locks import pid_alive

    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob("*.tmp-*") if recursive else folder.glob("*.tmp-*"):
        match = _TMP_SUFFIX.search(path.name)
        if match and path.is_file() and not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
