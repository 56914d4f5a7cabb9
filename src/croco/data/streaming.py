"""Shards generated in the background while training reads the finished ones (``PairDataModule`` with
``stream_val_shards``, docs/pretraining.md "First launch").

The fill callable of a source (``data.generate_if_missing``, a partial of
``croco.synth.pipeline.generate_pairs``) runs in a child process, ``python -m croco.data.streaming``: the callable
and the folder reach it pickled on its stdin, its output goes to ``<folder>/.generation.log``. What the training
side relies on is the generator's contract: a shard file appears only when it is finished (written under a
temporary name, then renamed), shards are numbered ``shard-00000.h5`` upwards in the order they are planned, and
the generator holds the folder's lock, so a second generation of the same folder stops at once with one line.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import pickle
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BACKGROUND_NICENESS", "LOG_NAME", "BackgroundGeneration", "PlannedOutput", "planned_output", "shard_name"]

BACKGROUND_NICENESS = 10
"""Added to the child's scheduling niceness (and so its pool workers'), and the niceness of its scheduling
autogroup: once training runs it takes the cores first, while the generator only has to finish the next shards
before the next epoch boundary. The child runs in a session of its own (so that Ctrl-C in the terminal reaches only
the trainer), and with Linux's autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``) a new session
is a new group that gets an equal share of the CPU whatever its processes' niceness; the group's own niceness
(``/proc/self/autogroup``, ``man 7 sched``) is what yields. Measured on two cores: the first ViT-B step took
1.9 min with the process niceness alone (at 10 or 19), 54 s with the group's too, 49 s without a generator."""

AUTOGROUP = Path("/proc/self/autogroup")
"""Linux: this process's scheduling autogroup, ``/autogroup-<id> nice <n>``; writing a number sets the group's
niceness (raising it needs no privilege)."""

LOG_NAME = ".generation.log"
"""The child's stdout and stderr, inside the folder it fills (``*.h5`` listings never see it)."""

_SHARD_NAME = "shard-{index:05d}.h5"


def shard_name(index: int) -> str:
    """The file name the generator gives shard ``index``."""
    return _SHARD_NAME.format(index=index)


@dataclass(frozen=True)
class PlannedOutput:
    """What a fill callable will write in all: pairs and shards."""

    pairs: int
    shards: int


def planned_output(generate: Callable[..., Any]) -> PlannedOutput | None:
    """The pairs and shards a fill callable will write, when it says so through ``pairs`` and ``pairs_per_shard``
    arguments (a partial of ``generate_pairs`` does; unset ones are read from the function's defaults); None for
    any other callable."""
    func = getattr(generate, "func", generate)
    keywords = getattr(generate, "keywords", None) or {}
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return None

    def argument(name: str) -> Any:
        if name in keywords:
            return keywords[name]
        parameter = parameters.get(name)
        return None if parameter is None else parameter.default

    pairs, per_shard = argument("pairs"), argument("pairs_per_shard")
    if not (isinstance(pairs, int) and isinstance(per_shard, int) and pairs > 0 and per_shard > 0):
        return None
    return PlannedOutput(pairs=pairs, shards=math.ceil(pairs / per_shard))


def _last_error_line(log_path: Path) -> str | None:
    """The last ``error: ...`` line the child wrote (its one-line reason), from the end of its log."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in re.split(r"[\r\n]+", tail) if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return errors[-1][len("error: ") :] if errors else (lines[-1] if lines else None)


class BackgroundGeneration:
    """``generate(folder)`` in a child process; ``returncode`` polls it, ``failure()`` says why it failed, ``stop()``
    interrupts it the way Ctrl-C does (the generator removes its temporary files and keeps the finished shards)."""

    def __init__(self, folder: str | os.PathLike, generate: Callable[[Path], Any]) -> None:
        self.folder = Path(folder)
        self.generate = generate
        self.log_path = self.folder / LOG_NAME
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError(f"{self.folder}: background generation already started (pid {self.pid})")
        payload = pickle.dumps((self.generate, str(self.folder)))
        self.folder.mkdir(parents=True, exist_ok=True)
        package_root = str(Path(__file__).resolve().parents[2])  # the child imports this very croco
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "wb") as log_file:
            # its own process group: stop() reaches the generator's pool workers too, and a Ctrl-C in the terminal
            # goes to the training process, which stops it (the training run's teardown and close)
            self._process = subprocess.Popen(
                [sys.executable, "-m", "croco.data.streaming"],
                stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(payload)
            self._process.stdin.close()
        except BrokenPipeError:  # the child died at once: returncode and failure() tell why
            pass

    @property
    def returncode(self) -> int | None:
        """None while it runs; its exit status once it ended (0: every planned shard is written)."""
        return self._process.poll() if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def failure(self) -> str | None:
        """One line when the child ended with an error, None while it runs or after a success."""
        code = self.returncode
        if code is None or code == 0:
            return None
        reason = _last_error_line(self.log_path) or "no output"
        return f"background generation of {self.folder} failed (exit {code}): {reason} (log: {self.log_path})"

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt a running child (SIGINT, as Ctrl-C) and wait for its clean-up; after ``timeout`` kill its
        whole process group (the generator and its pool workers: none goes on writing shards)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else 'no message'}"


def main() -> int:
    """The child: read ``(generate, folder)`` from stdin, fill the folder, end with one ``error:`` line on failure."""
    generate, folder = pickle.load(sys.stdin.buffer)
    with contextlib.suppress(OSError, AttributeError):  # not every platform lets a process lower its priority
        os.nice(BACKGROUND_NICENESS)
    with contextlib.suppress(OSError):  # Linux with autogroup scheduling only
        AUTOGROUP.write_text(str(BACKGROUND_NICENESS))
    try:
        generate(Path(folder))
    except KeyboardInterrupt as error:
        print(f"error: interrupted: {error}" if str(error) else "error: interrupted", flush=True)
        return 130
    except Exception as error:  # noqa: BLE001 - the parent reports every failure as one line
        print(f"error: {_one_line(error)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
