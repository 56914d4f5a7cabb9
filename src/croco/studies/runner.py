"""Running a study: jobs (a training run or an evaluation) in stages, each job done once.

A job is a command line (``python train.py ...`` or ``python -m croco.eval...``). When it succeeds, its marker
``logs/studies/jobs/<job>.done`` records the command; a relaunch skips every job whose marker holds the same
command (whichever study ran it: studies share runs, e.g. the CroCo pretraining), so an interrupted study goes on
where it stopped (a training run itself resumes from its ``last.ckpt``). Jobs of one stage are independent and run
``jobs`` at a time, each with its share of the CPU threads (all of them for a stage of one job); a stage starts
when the previous one has finished. Each job's output goes to ``<job>.log`` beside its marker; a failure stops the
study after its stage with one line naming the job and its log.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Job", "StudyError", "checkpoint_of", "module_job", "run_dir", "run_stages", "train_job"]

RUNS_ROOT = Path("logs/runs")
STUDIES_ROOT = Path("logs/studies")


class StudyError(RuntimeError):
    """A job of a study failed (one line: the job and its log)."""


@dataclass(frozen=True)
class Job:
    key: str  # unique within its study: names the marker and the log (may hold '/')
    argv: tuple[str, ...]  # what follows `python`

    @property
    def command(self) -> str:
        return shlex.join(["python", *self.argv])


def run_dir(run_name: str) -> Path:
    return RUNS_ROOT / run_name


def checkpoint_of(run_name: str) -> Path:
    """The final (last) checkpoint of a training run of a study."""
    return run_dir(run_name) / "checkpoints" / "last.ckpt"


def train_job(run_name: str, overrides: Sequence[str]) -> Job:
    """``python train.py run_name=<run_name> logger=csv <overrides>``: a named run, the CSV logger only (the
    reports read its metrics.csv)."""
    return Job(run_name, ("train.py", f"run_name={run_name}", "logger=csv", *overrides))


def module_job(key: str, module: str, args: Sequence[str]) -> Job:
    return Job(key, ("-m", module, *args))


def _marker(job: Job) -> Path:
    """Per job, not per study: a job two studies share runs once."""
    return STUDIES_ROOT / "jobs" / f"{job.key}.done"


def is_done(job: Job) -> bool:
    marker = _marker(job)
    return marker.is_file() and marker.read_text().strip() == job.command


def _run_one(job: Job, threads: int, python: str) -> tuple[Job, int, float, Path]:
    marker = _marker(job)
    log_path = marker.with_name(marker.name[: -len(".done")] + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline"}
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"$ {job.command}\n")
        log.flush()
        rc = subprocess.call([python, *job.argv], stdout=log, stderr=subprocess.STDOUT, env=env)
    if rc == 0:
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(job.command + "\n")
        os.replace(tmp, marker)
    return job, rc, time.monotonic() - start, log_path


def run_stages(
    study: str,
    stages: Sequence[Sequence[Job]],
    jobs: int = 1,
    dry_run: bool = False,
    python: str = sys.executable,
) -> int:
    """Run every job not done yet, stage after stage; returns the number of jobs run. ``dry_run``: print the
    commands that would run."""
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: expected at least 1")
    keys = [job.key for stage in stages for job in stage]
    if len(set(keys)) != len(keys):
        raise ValueError(f"study {study}: job keys repeat: {sorted({k for k in keys if keys.count(k) > 1})}")
    total = sum(len(stage) for stage in stages)
    done_count, ran = 0, 0
    for index, stage in enumerate(stages):
        todo = [job for job in stage if not is_done(job)]
        done_count += len(stage) - len(todo)
        if not todo:
            continue
        print(f"[{study}] stage {index + 1}/{len(stages)}: {len(todo)} job(s), {jobs} at a time", flush=True)
        if dry_run:
            for job in todo:
                print(f"  {job.command}")
            continue
        failed: list[str] = []
        threads = max(1, (os.cpu_count() or 1) // min(jobs, len(todo)))  # a lone job gets every core
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_run_one, job, threads, python) for job in todo]
            for future in futures:
                job, rc, seconds, log_path = future.result()
                ran += 1
                done_count += rc == 0
                state = "done" if rc == 0 else f"FAILED (exit {rc})"
                print(f"[{study}] {done_count}/{total} {job.key}: {state} in {seconds / 60:.1f} min ({log_path})",
                      flush=True)  # fmt: skip
                if rc != 0:
                    failed.append(f"{job.key} (exit {rc}, log {log_path})")
        if failed:
            raise StudyError(f"study {study}: {len(failed)} job(s) failed: {'; '.join(failed)}")
    return ran
