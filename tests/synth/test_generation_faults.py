"""Faults of pair generation: a second generation on a busy folder, a full disk, Ctrl-C, and the one-line
errors of generate.py (docs/data-format.md, "Guarantees and errors"). Small: 32x32 pairs, one pair per
shard."""

from __future__ import annotations

import builtins
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from croco.data import shards
from croco.data.shard_jobs import folder_lock
from croco.data.shards import NoSpaceError, PairRecord, ShardReader, ShardWriter
from croco.synth.pipeline import generate_pairs
from croco.utils.locks import FolderLock, FolderLocked
from tests.generate_app import compose_generate, generate_script

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = {"resolution": 32, "pairs_per_shard": 1, "pairs_per_scene": 2, "progress": False}
NO_SPACE = "No space left on device"


def _dead_pid() -> int:
    """The pid of a process that has exited (a killed writer's temporary files carry such a pid)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def _record(size: int = 32) -> PairRecord:
    image = np.full((size, size, 3), 120, dtype=np.uint8)
    return PairRecord(image, image, np.eye(3), np.eye(3), np.eye(4), np.eye(4), 0.5, 0.5, "scene")


# ----------------------------------------------------------------------------------------- the folder lock


def test_second_generation_on_a_busy_folder_stops_at_once_and_keeps_the_first_ones_files(tmp_path):
    live = tmp_path / f"shard-00000.h5.tmp-{os.getppid()}"  # being written by the running generation
    live.write_bytes(b"half a shard")
    with FolderLock(tmp_path, "pair generation"):  # what the running generation holds
        start = time.perf_counter()
        with pytest.raises(FolderLocked) as info:
            generate_pairs(tmp_path, 2, **SMALL)
        assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "\n" not in message
    assert re.match(
        rf"{re.escape(str(tmp_path))}: pair generation \(pid {os.getpid()} on .*\) is using", message
    )
    assert live.exists() and not list(tmp_path.glob("*.h5"))


def test_only_dead_processes_temporaries_are_removed(tmp_path, capsys):
    dead = _dead_pid()
    stale = [tmp_path / f"shard-00001.h5.tmp-{dead}", tmp_path / f"shard-00001.h5.tmp-{dead}.images"]
    live = tmp_path / f"shard-00001.h5.tmp-{os.getppid()}"  # e.g. a cluster job's writer on this machine
    for path in [*stale, live]:
        path.write_bytes(b"half a shard")
    generate_pairs(tmp_path, 2, **SMALL)
    assert "removed 2 stale temporary file(s)" in capsys.readouterr().out
    assert _temporaries(tmp_path) == [live.name]
    assert len(ShardReader(tmp_path / "shard-00001.h5")) == 1


def test_cluster_jobs_lock_only_their_own_block(tmp_path):
    """Job 1 runs while job 0 holds its lock and writes; a second launch of job 0 is refused."""
    live = tmp_path / f"shard-00000.h5.tmp-{os.getppid()}"
    live.write_bytes(b"job 0 writing")
    with folder_lock(tmp_path, 2, 0, "pair generation"):
        (written,) = generate_pairs(tmp_path, 2, num_jobs=2, job_index=1, **SMALL)
        assert written.name == "shard-00001.h5" and live.exists()
        with pytest.raises(FolderLocked, match=r"pair generation job 0 of 2 \(pid "):
            generate_pairs(tmp_path, 2, num_jobs=2, job_index=0, **SMALL)


# --------------------------------------------------------------------------------------------- full disk


class _FullDiskFile:
    """The staged image file on a full disk: writes fail, and so does the flush when it is closed."""

    def __init__(self, path) -> None:
        self.file = builtins.open(path, "wb")  # noqa: SIM115 (closed in close)

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, NO_SPACE)

    def close(self) -> None:
        self.file.close()
        raise OSError(errno.ENOSPC, NO_SPACE)


def _fill_disk_after(monkeypatch, first_full: str) -> None:
    """From shard ``first_full`` on, the writer's staged image file behaves as on a full disk."""

    def fake_open(path, mode="r", *args, **kwargs):
        if mode == "wb" and Path(path).name >= first_full and ".tmp-" in Path(path).name:
            return _FullDiskFile(path)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(shards, "open", fake_open, raising=False)


def test_shard_writer_on_a_full_disk_raises_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    _fill_disk_after(monkeypatch, "a.h5")
    pattern = rf"^no space left on {re.escape(str(tmp_path))} \(while writing a\.h5"
    with (
        pytest.raises(NoSpaceError, match=pattern),
        ShardWriter(tmp_path / "a.h5", source="unit", resolution=(32, 32)) as w,
    ):
        w.add(_record())
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_generation_keeps_finished_shards_and_no_temporaries(tmp_path, monkeypatch):
    _fill_disk_after(monkeypatch, "shard-00001.h5")
    with pytest.raises(NoSpaceError) as info:
        generate_pairs(tmp_path, 3, **SMALL)
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and "\n" not in message
    assert message.startswith(f"no space left on {tmp_path}: 1 finished shard kept in {tmp_path}")
    assert "rerun the same command to resume" in message
    assert _temporaries(tmp_path) == [] and [p.name for p in tmp_path.glob("*.h5")] == ["shard-00000.h5"]
    assert ShardReader(tmp_path / "shard-00000.h5").read(0)["image1"].shape == (32, 32, 3)
    monkeypatch.undo()  # space again: the same call resumes
    assert len(generate_pairs(tmp_path, 3, **SMALL)) == 3


def test_full_disk_reported_by_hdf5_is_recognised(tmp_path, monkeypatch):
    """h5py reports a failed write as an OSError without errno; the C errno is only in its text."""
    original = h5py.Dataset.__setitem__

    def setitem(self, key, value):
        if "shard-00001" in self.file.filename:
            raise OSError(f"Can't write data (file write failed: errno = 28, error message = '{NO_SPACE}')")
        original(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)
    with pytest.raises(NoSpaceError, match=r"1 finished shard kept"):
        generate_pairs(tmp_path, 2, **SMALL)  # depth maps go through h5py while the pair is added
    assert _temporaries(tmp_path) == [] and (tmp_path / "shard-00000.h5").is_file()


# --------------------------------------------------------------------------------------------- generate.py


def _compose(*overrides: str):
    return compose_generate("resolution=32", "pairs_per_shard=1", "progress=false", *overrides)


def _launch(tmp_path: Path, *overrides: str, debug: bool = False, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    env.pop("CROCO_DEBUG", None)
    env.pop("HYDRA_FULL_ERROR", None)
    if debug:
        env["CROCO_DEBUG"] = "1"
    command = [sys.executable, str(REPO_ROOT / "generate.py"), "resolution=32", "pairs_per_shard=1",
               "progress=false", f"hydra.run.dir={tmp_path}/run", *overrides]  # fmt: skip
    # Ctrl-C must reach the generator as KeyboardInterrupt even when an earlier test of this pytest process left
    # SIGINT ignored (pool workers ignore it, and an ignored signal is inherited through fork and exec)
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint, **popen)  # noqa: PLW1509  # fmt: skip


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _error_line(process: subprocess.Popen, code: int = 2) -> str:
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    return lines[0]


def test_generate_py_wrong_out_and_busy_folder_are_one_line(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    line = _error_line(_launch(tmp_path, "out=a_file"))
    assert line == f"error: {tmp_path / 'a_file'}: exists and is not a folder; the shards need a folder " + (
        "(choose another out folder)"
    )
    with FolderLock(tmp_path / "busy", "pair generation"):
        line = _error_line(_launch(tmp_path, "out=busy"))
    assert f"{tmp_path / 'busy'}: pair generation (pid {os.getpid()} on " in line and "wait for it" in line
    debug = _launch(tmp_path, "out=a_file", debug=True)
    _, stderr = debug.communicate(timeout=120)
    assert debug.returncode != 0 and "Traceback" in stderr and "NotADirectoryError" in stderr


def test_generate_py_ctrl_c_keeps_finished_shards_and_exits_130(tmp_path):
    """Ctrl-C reaches the whole process group, pool workers included; the workers' files are removed too."""
    out = tmp_path / "pairs"
    process = _launch(tmp_path, "out=pairs", "pairs=500", "workers=2", start_new_session=True)
    deadline = time.monotonic() + 120
    # two finished shards, whichever workers wrote them (with two workers they finish in any order)
    while len(list(out.glob("*.h5"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    finished_before = {p.name for p in out.glob("*.h5")}
    # pressed again if unanswered: the parent ignores SIGINT for the instant the pool workers start
    while process.poll() is None and time.monotonic() < deadline:
        os.killpg(process.pid, signal.SIGINT)
        answered = time.monotonic() + 5.0
        while process.poll() is None and time.monotonic() < answered:
            time.sleep(0.1)
    line = _error_line(process, code=130)
    finished = sorted(p.name for p in out.glob("*.h5"))
    assert len(finished_before) >= 2 and finished_before <= set(finished)
    assert (
        line
        == f"error: interrupted: {len(finished)} finished shards kept in {out}, rerun the same command "
        + ("to resume")
    )
    assert _temporaries(out) == []


def test_generate_py_existing_shard_and_full_disk_are_one_line(tmp_path, monkeypatch, capsys):
    script = generate_script()
    with ShardWriter(tmp_path / "other" / "shard-00000.h5", source="unit", resolution=(32, 32)) as writer:
        writer.add(_record())
    assert script.run(_compose(f"out={tmp_path / 'other'}", "pairs=1")) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(
        f"error: {tmp_path / 'other' / 'shard-00000.h5'}: existing shard has generator=None"
    )
    assert "\n" not in line

    _fill_disk_after(monkeypatch, "shard-00001.h5")
    assert script.run(_compose(f"out={tmp_path / 'full'}", "pairs=2")) == 2
    line = capsys.readouterr().err.strip()
    assert (
        line.startswith(f"error: no space left on {tmp_path / 'full'}: 1 finished shard kept")
        and "\n" not in line
    )
    assert _temporaries(tmp_path / "full") == []
