"""The runner that writes a dataset's shards, shared by the pair generator and the importers.

A caller cuts its work into shard jobs (any object with ``path`` and ``count``: the shard file and how many
pairs it will hold at most) and gives two functions: ``write(job, tick)`` writes one shard atomically (calling
``tick()`` once per pair, for the progress bar) and returns its statistics, a picklable dict; and
``check_existing(job)`` raises a one-line error unless an existing shard was made with the same settings.
``run_shard_jobs`` then does what both need (docs/data-format.md, "Guarantees and errors"):

- lock the output folder (``croco.utils.locks.FolderLock``; a cluster job ``num_jobs`` > 1 locks only its own
  block, ``.lock-job-<i>-of-<n>``), so a second launch on the folder stops at once;
- remove the temporary files that no running process owns, keep (after the check) the finished shards;
- write the missing shards in this process or in ``workers`` spawned processes, with a progress bar in pairs/s;
- on Ctrl-C or a full disk, remove the temporary files and stop with one line that counts the kept shards.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from croco.data.shards import NoSpaceError, is_no_space
from croco.utils.files import remove_stale_temporaries
from croco.utils.locks import FolderLock, pid_alive

__all__ = ["GenerationInterrupted", "RunResult", "folder_lock", "normalise_attr", "run_shard_jobs"]


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C while writing shards, after the clean-up; the message counts the finished shards that were kept."""


class ShardJob(Protocol):
    @property
    def path(self) -> str: ...

    @property
    def count(self) -> int: ...


WriteShard = Callable[[Any, Callable[[], None] | None], dict[str, Any]]


@dataclass
class RunResult:
    """The statistics of each shard written by this run (in job order), its time, the shards kept."""

    stats: list[dict[str, Any]]
    seconds: float
    kept: int
    pairs: int = 0  # at most this many pairs were due in the shards written
    written: list[str] = field(default_factory=list)  # the paths of the shards written (order of ``stats``)


def normalise_attr(value: Any) -> Any:
    """A shard attribute in a form that compares equal however it was stored (lists, numpy scalars, rounding)."""
    if isinstance(value, (list, tuple)):
        return [normalise_attr(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise_attr(v) for k, v in value.items()}
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float):
        return round(value, 9)
    return value


class _JobLock(FolderLock):
    """A ``FolderLock`` under another file name: one per cluster job."""

    def __init__(self, folder: Path, what: str, name: str) -> None:
        super().__init__(folder, what)
        self._name = name

    @property
    def path(self) -> Path:
        return self.folder / self._name


def folder_lock(out: Path, num_jobs: int, job_index: int, what: str = "pair generation") -> FolderLock:
    """The lock of a run: the whole folder, or for a cluster job only its block (``.lock-job-<i>-of-<n>``)."""
    if num_jobs == 1:
        return FolderLock(out, what)
    return _JobLock(out, f"{what} job {job_index} of {num_jobs}", f".lock-job-{job_index}-of-{num_jobs}")


_TEMPORARY = re.compile(r"^(?P<name>.+?)\.tmp-(?P<pid>\d+)(\..*)?$")


def remove_temporaries(out: Path, jobs: Sequence[ShardJob], num_jobs: int) -> int:
    """Delete the temporary files that no running writer owns; returns how many.

    Those are the files of dead processes (a killed run, pool workers just terminated) and this process's own
    (no writer of it is open when this runs, and a container may give a new run the old run's pid). A single
    run holds the whole folder and clears it with ``remove_stale_temporaries``; a cluster job touches only its
    own shards' files, since another job may write from another machine, where its pid means nothing here.
    """
    removed = len(remove_stale_temporaries(out)) if num_jobs == 1 else 0
    names = {Path(job.path).name for job in jobs}
    for path in out.glob("*.tmp-*"):
        match = _TEMPORARY.match(path.name)
        if match is None or match["name"] not in names or not path.is_file():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or not pid_alive(pid):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def run_shard_jobs(
    out: Path,
    jobs: Sequence[ShardJob],
    *,
    write: WriteShard,
    check_existing: Callable[[Any], None],
    num_jobs: int = 1,
    job_index: int = 0,
    workers: int = 0,
    progress: bool = True,
    describe: str = "",
    label: str = "generate",
    what: str = "pair generation",
) -> RunResult:
    """Write the missing shards of ``jobs`` into ``out`` under its lock (see the module docstring).

    ``write`` must be a module-level function (workers are spawned and receive it by name). ``describe`` goes
    into the status line, ``label`` prefixes the printed lines and names the progress bar, ``what`` the lock
    holder. ``NotADirectoryError`` if ``out`` is a file, ``FolderLocked`` if another run holds it,
    ``NoSpaceError`` for a full disk and ``GenerationInterrupted`` for Ctrl-C (both after the clean-up).
    """
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"{out}: exists and is not a folder; the shards need a folder (choose another out folder)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out, num_jobs, job_index, what):
            return _run_locked(out, jobs, write, check_existing, num_jobs, workers, progress, describe, label)
    except NoSpaceError:
        raise
    except OSError as error:  # a full disk outside the shard writers (the folder, the lock file)
        if is_no_space(error):
            raise NoSpaceError(
                f"no space left on {out}: free some space and rerun the same command"
            ) from error
        raise


def _run_locked(
    out: Path,
    jobs: Sequence[ShardJob],
    write: WriteShard,
    check_existing: Callable[[Any], None],
    num_jobs: int,
    workers: int,
    progress: bool,
    describe: str,
    label: str,
) -> RunResult:
    """Check the finished shards and write the missing ones, while this process holds the folder's lock."""
    stale = remove_temporaries(out, jobs, num_jobs)
    pending = []
    for job in jobs:
        if Path(job.path).exists():
            check_existing(job)
            continue
        pending.append(job)
    kept = len(jobs) - len(pending)
    todo = sum(job.count for job in pending)
    print(
        f"[{label}] {out}: {len(jobs)} shard(s) in this job, {kept} finished and kept, "
        f"{len(pending)} to write ({todo} pairs, {describe})"
        + (f"; removed {stale} stale temporary file(s)" if stale else ""),
        flush=True,
    )
    if not pending:
        return RunResult([], 0.0, kept, 0)
    try:
        stats, seconds = _run_jobs(pending, todo, write, workers, progress, label)
    except BaseException as error:
        remove_temporaries(out, jobs, num_jobs)  # what terminated workers (or this process) left
        finished = sum(Path(job.path).exists() for job in jobs)
        kept_text = f"{finished} finished shard{'' if finished == 1 else 's'} kept in {out}"
        if isinstance(error, KeyboardInterrupt):
            raise GenerationInterrupted(
                f"interrupted: {kept_text}, rerun the same command to resume"
            ) from None
        if is_no_space(error):
            raise NoSpaceError(
                f"no space left on {out}: {kept_text}, no temporary file left; free some space (or choose "
                "another out folder) and rerun the same command to resume"
            ) from error
        raise
    return RunResult(stats, seconds, kept, todo, [job.path for job in pending])


_PROGRESS = None  # multiprocessing.Value in pool workers


def _init_worker(counter) -> None:
    global _PROGRESS
    _PROGRESS = counter
    # Ctrl-C reaches the whole process group: the parent alone reports it and terminates the workers, instead
    # of every worker printing its own traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_write(task: tuple[WriteShard, Any]) -> dict[str, Any]:
    write, job = task

    def tick() -> None:
        with _PROGRESS.get_lock():
            _PROGRESS.value += 1

    return write(job, tick)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore Ctrl-C while pool workers start: spawned interpreters inherit the ignored signal and keep it, so
    an early Ctrl-C cannot interrupt their start-up (``_init_worker`` ignores it for good)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_jobs(
    jobs: Sequence[ShardJob], total: int, write: WriteShard, workers: int, progress: bool, label: str
) -> tuple[list[dict[str, Any]], float]:
    from tqdm import tqdm

    start = time.perf_counter()
    bar = tqdm(
        total=total, unit="pair", disable=not progress, desc=label, dynamic_ncols=True, mininterval=1.0
    )

    def refresh(done: int) -> None:
        if done > bar.n:
            elapsed = time.perf_counter() - start
            bar.set_postfix_str(f"{done / max(elapsed, 1e-9):.1f} pairs/s", refresh=False)
            bar.update(done - bar.n)  # tqdm throttles the redraws (mininterval)

    try:
        if workers <= 1 or len(jobs) == 1:
            done = 0

            def tick() -> None:
                nonlocal done
                done += 1
                refresh(done)

            stats = [write(job, tick) for job in jobs]
        else:
            context = multiprocessing.get_context("spawn")
            counter = context.Value("q", 0)
            with _sigint_ignored():
                pool = context.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(counter,))
            with pool:  # leaving it (also by an error or Ctrl-C) terminates the workers
                pending = pool.map_async(_pool_write, [(write, job) for job in jobs], chunksize=1)
                while not pending.ready():
                    pending.wait(0.5)
                    refresh(counter.value)
                stats = pending.get()
            refresh(counter.value)
    finally:
        bar.close()
    return stats, time.perf_counter() - start
