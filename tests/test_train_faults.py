"""Training when things go wrong: a sweep survives its bad job, a diverged run never writes NaN checkpoints, a run
folder has one launch at a time, leftovers of killed processes are cleaned, a full disk and a broken or foreign
``last.ckpt`` are named in one line, and a rejected config leaves no run folder."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from croco.tasks.callbacks import AtomicCheckpointIO, NonFiniteCheckpointError
from croco.tasks.training import train
from croco.utils.config import ConfigError
from croco.utils.locks import FolderLock, FolderLocked
from tests.conftest import REPO_ROOT, tiny_run_overrides

pytestmark = pytest.mark.usefixtures("single_thread")


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=env, check=False, **kwargs)  # fmt: skip


@pytest.mark.slow
def test_a_bad_job_fails_alone_in_a_sweep(tiny_shards, tmp_path):
    overrides = [o for o in tiny_run_overrides(tiny_shards, tmp_path) if not o.startswith("paths.root_dir")]
    run = _run(["-m", *overrides, f"paths.root_dir={tmp_path}", "masking.ratio=1.5,0.5", "trainer.max_steps=1",
                "trainer.limit_val_batches=1"])  # fmt: skip
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert any("job 0" in line and "masking.ratio=1.5" in line and "strictly between 0 and 1" in line
               for line in errors)  # fmt: skip
    assert "1 job(s) of the sweep failed" in errors[-1]
    good = [p for p in (tmp_path / "logs" / "runs").rglob("last.ckpt") if "masking.ratio=0.5" in str(p)]
    assert good, "the job after the bad one did not run"


def test_checkpoint_io_refuses_non_finite_weights_and_keeps_the_previous_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    bad = {"state_dict": {"w": torch.ones(3)}, "global_step": 2,
           "optimizer_states": [{"state": {0: {"exp_avg": torch.tensor([1.0, float("nan")])}}}]}  # fmt: skip
    with pytest.raises(NonFiniteCheckpointError, match=r"optimizer_states.0.state.0.exp_avg is not finite"):
        io.save_checkpoint(bad, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_diverged_run_keeps_finite_checkpoints_and_names_the_lr_key(compose_train, tiny_shards, tmp_path):
    cfg = compose_train(*tiny_run_overrides(tiny_shards, tmp_path), "optim.lr=1e30", "optim.warmup_epochs=0",
                        "trainer.max_steps=6", "callbacks.checkpoint_last.every_n_train_steps=1",
                        "trainer.limit_val_batches=1")  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"lower optim.lr \(now 1e\+30\)|not finite"):
        train(cfg)
    last = Path(cfg.paths.ckpt_dir) / "last.ckpt"
    if last.exists():
        state = torch.load(last, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert list(Path(cfg.paths.output_dir).glob("csv/metrics.csv")), "the crashed launch has no metrics file"


def test_disk_full_while_checkpointing_is_named(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr("shutil.disk_usage", lambda _: type("Usage", (), {"free": 0})())
    with pytest.raises(OSError, match=f"no space left on {tmp_path}") as info:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
    assert info.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())


def test_one_launch_per_run_folder_and_a_killed_holder_does_not_block(compose_train, tiny_shards, tmp_path):
    cfg = compose_train(*tiny_run_overrides(tiny_shards, tmp_path), "trainer.max_steps=1",
                        "trainer.limit_val_batches=1")  # fmt: skip
    with FolderLock(cfg.paths.run_dir, "training run other"), pytest.raises(FolderLocked, match="training run other"):
        train(cfg)
    holder = subprocess.Popen([sys.executable, "-c", ("import sys, time; from croco.utils.locks import FolderLock; "
                               f"FolderLock({cfg.paths.run_dir!r}, 'x').acquire(); print('held', flush=True); "
                               "time.sleep(60)")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert train(cfg)["train/loss"] > 0  # the kernel released the dead holder's lock


def test_leftovers_of_dead_writers_are_removed_at_start(compose_train, tiny_shards, tmp_path):
    cfg = compose_train(*tiny_run_overrides(tiny_shards, tmp_path), "trainer.max_steps=1",
                        "trainer.limit_val_batches=1")  # fmt: skip
    ckpt_dir = Path(cfg.paths.ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = ckpt_dir / f".last.ckpt.tmp-{dead.stdout.strip()}"
    live = ckpt_dir / f".other.ckpt.tmp-{os.getpid()}"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"x")
    train(cfg)
    assert not stale.exists() and live.exists()


def test_a_truncated_last_checkpoint_is_named_with_how_to_start_fresh(compose_train, tiny_shards, tmp_path):
    cfg = compose_train(*tiny_run_overrides(tiny_shards, tmp_path), "trainer.max_steps=1",
                        "trainer.limit_val_batches=1")  # fmt: skip
    train(cfg)
    last = Path(cfg.paths.ckpt_dir) / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ConfigError, match=r"last.ckpt: truncated or not a checkpoint .*ckpt_path=null"):
        train(cfg)


def test_resuming_with_another_network_is_named(compose_train, tiny_shards, tmp_path):
    overrides = [*tiny_run_overrides(tiny_shards, tmp_path), "trainer.max_steps=1", "trainer.limit_val_batches=1",
                 "run_name=fixed"]  # fmt: skip
    train(compose_train(*overrides))
    with pytest.raises(ConfigError, match=r"written by another network: dec_depth=2 \(config: 3\)"):
        train(compose_train(*overrides, "model.dec_depth=3"))


def test_a_rejected_config_leaves_no_run_folder(tiny_shards, tmp_path):
    run = _run([*tiny_run_overrides(tiny_shards, tmp_path), "masking.ratio=1.5"])
    assert run.returncode == 2
    assert run.stderr.strip().startswith("error: masking.ratio=1.5") and run.stderr.strip().count("\n") == 0
    assert not (tmp_path / "logs" / "runs").exists() or not any((tmp_path / "logs" / "runs").iterdir())
