"""One process at a time in a folder: an advisory ``flock`` on ``<folder>/.lock``, released by the kernel when the
holder exits however it exits (kill -9, OOM, node loss), so a stale lock never blocks a relaunch or a SLURM
requeue. The lock file records who holds it, for the one-line message another launch gets.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Self

__all__ = ["FolderLock", "FolderLocked", "pid_alive"]

LOCK_NAME = ".lock"


class FolderLocked(RuntimeError):
    """Another live process holds the folder; the message names it and the holder."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """``with FolderLock(folder, "training"):`` holds ``folder`` or raises :class:`FolderLocked` at once.

    ``what`` says what the holder is doing (for the message). Re-entrant in one process is not supported: one lock
    object per folder."""

    def __init__(self, folder: str | os.PathLike, what: str = "a process"):
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def acquire(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FolderLocked(f"{self.folder}: {holder} is using this folder; wait for it to finish or stop it "
                               "(the lock goes with the process)") from None  # fmt: skip
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        record = f"{self.what} (pid {os.getpid()} on {socket.gethostname()}, since {started})\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
