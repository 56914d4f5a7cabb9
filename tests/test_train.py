"""End-to-end training on a CPU: every experiment runs, the smoke setting overfits, resuming is exact, DDP on two
processes, multirun, checkpoints, export, panels and logged metrics."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from croco.tasks.training import resolve_resume_checkpoint, train
from croco.utils.config import group_options

pytestmark = pytest.mark.usefixtures("single_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
# pretraining experiments (the downstream ones select their task and run in tests/tasks/test_downstream_tasks.py)
EXPERIMENTS = [e for e in group_options(REPO_ROOT / "conf", "experiment")
               if "override /task:" not in (REPO_ROOT / "conf" / "experiment" / f"{e}.yaml").read_text()]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _metrics(output_dir: Path) -> list[dict[str, str]]:
    with open(output_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_fast_dev_run(experiment, compose_train, tiny_shards, tiny_overrides, tmp_path):
    cfg = compose_train(
        f"experiment={experiment}", *tiny_overrides(tiny_shards, tmp_path), "trainer.fast_dev_run=true"
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    assert 0 < metrics["val/psnr_masked"] < 100


@pytest.mark.parametrize("debug", ["fdr", "overfit", "limit"])
def test_debug_options_run(debug, compose_train, tiny_shards, tiny_overrides, tmp_path):
    cfg = compose_train(*tiny_overrides(tiny_shards, tmp_path), f"debug={debug}", "trainer.max_epochs=1")
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"])


def test_bf16_mixed_precision_runs_on_cpu(compose_train, tiny_shards, tiny_overrides, tmp_path):
    """The precision GPUs (and bf16-capable CPUs) train in: the task's metrics cope with bf16 outputs."""
    cfg = compose_train(*tiny_overrides(tiny_shards, tmp_path), "trainer.precision=bf16-mixed",
                        "trainer.fast_dev_run=true")  # fmt: skip
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/psnr_masked"])


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, tiny_shards, compose_at, tiny_overrides):
    """A 1-epoch run (4 optimizer steps) with checkpoints every 2 steps: the artefacts of a real run."""
    root = tmp_path_factory.mktemp("run")
    overrides = [
        *tiny_overrides(tiny_shards, root),
        "run_name=resume_test",
        "trainer.max_epochs=1",
        "optim.lr=1e-3",
        "optim.warmup_epochs=0.5",
        "optim.epochs=3",
        "callbacks.checkpoint_last.every_n_train_steps=3",
        "callbacks.checkpoint_keep.every_n_train_steps=2",
        "callbacks.panels.every_n_steps=2",
        "callbacks.export.path=${paths.run_dir}/export.pth",
    ]
    cfg = compose_at(overrides, root)
    metrics = train(cfg)
    return {"cfg": cfg, "overrides": overrides, "root": root, "metrics": metrics}


def test_run_writes_checkpoints_panels_metrics_and_export(one_epoch_run):
    cfg = one_epoch_run["cfg"]
    ckpt_dir, out = Path(cfg.paths.ckpt_dir), Path(cfg.paths.output_dir)
    assert ckpt_dir == one_epoch_run["root"] / "logs/runs/resume_test/checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        "last.ckpt",
        "step_0000002.ckpt",
        "step_0000004.ckpt",
    ]
    last = _load(ckpt_dir / "last.ckpt")
    assert last["global_step"] == 4  # written at the end although 4 is not a multiple of 3
    assert last["hyper_parameters"]["model"]["enc_embed_dim"] == 128
    assert last["cfg"]["masking"]["ratio"] == cfg.masking.ratio  # self-describing
    assert last["croco_kwargs"]["patch_size"] == 8
    assert not list(ckpt_dir.glob(".*tmp*"))  # atomic writes leave nothing behind
    assert sorted(p.name for p in (out / "panels").iterdir()) == ["step_000002.png", "step_000004.png"]
    rows = _metrics(out)
    keys = set().union(*(r.keys() for r in rows))
    assert {
        "train/loss",
        "train/lr",
        "val/loss",
        "val/psnr_masked",
        "perf/pairs_per_s",
        "train/grad_norm",
    } <= keys
    assert any(k.startswith(("perf/rss_gb", "perf/cuda")) for k in keys)
    hparams = OmegaConf.load(out / "csv" / "hparams.yaml")
    assert hparams.masking.ratio == cfg.masking.ratio and hparams["model/params_total"] > 0


def test_export_matches_the_trained_network(one_epoch_run, tmp_path):
    from croco.models import load_official_checkpoint
    from croco.tasks.export import main as export_main

    cfg = one_epoch_run["cfg"]
    exported = Path(cfg.paths.run_dir) / "export.pth"  # by the callback at the end of training
    assert exported.is_file()
    out = tmp_path / "cli.pth"
    assert export_main([str(Path(cfg.paths.ckpt_dir) / "last.ckpt"), str(out)]) == 0  # and on demand
    a, b = load_official_checkpoint(exported), load_official_checkpoint(out)
    state = _load(Path(cfg.paths.ckpt_dir) / "last.ckpt")["state_dict"]
    assert set(_load(out)) == {"model", "croco_kwargs"}
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]) and torch.equal(value, state[f"net.{key}"])
    assert export_main([str(tmp_path / "missing.ckpt"), str(out)]) == 1


def test_resume_continues_exactly(one_epoch_run, compose_at):
    """Stop after epoch 1 (4 steps), resume to epoch 2 == an uninterrupted 2-epoch run."""
    root = one_epoch_run["root"]
    resumed = compose_at([*one_epoch_run["overrides"], "trainer.max_epochs=2"], root, root / "out_resumed")
    train(resumed)
    fresh = compose_at([*one_epoch_run["overrides"], "trainer.max_epochs=2", "run_name=uninterrupted"], root,
                       root / "out_fresh")  # fmt: skip
    train(fresh)
    a = _load(Path(resumed.paths.ckpt_dir) / "last.ckpt")
    b = _load(Path(fresh.paths.ckpt_dir) / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 8 and a["epoch"] == b["epoch"]
    sa, sb = a["lr_schedulers"][0], b["lr_schedulers"][0]
    assert sa["last_epoch"] == sb["last_epoch"] == 8 and sa["_last_lr"] == sb["_last_lr"]
    oa, ob = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        assert torch.equal(oa[i]["step"], ob[i]["step"])
        torch.testing.assert_close(oa[i]["exp_avg"], ob[i]["exp_avg"], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"], rtol=1e-5, atol=1e-10)
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=1e-5, atol=1e-6)
    # the resumed launch logged steps 5..8 only
    steps = {int(r["step"]) for r in _metrics(root / "out_resumed") if r.get("train/loss")}
    assert min(steps) >= 4


def test_resume_in_the_middle_of_an_epoch_continues_its_pair_order(one_epoch_run, compose_at):
    """Stop at step 6 (batch 2 of epoch 2), resume to the end of epoch 2 == an uninterrupted 2-epoch run:
    the resumed epoch continues its own pair order, masks and schedule instead of restarting them."""
    root = one_epoch_run["root"]
    base = [*one_epoch_run["overrides"], "trainer.max_epochs=2", "callbacks.checkpoint_last.every_n_train_steps=6"]
    stopped = compose_at([*base, "run_name=mid_epoch", "trainer.max_steps=6"], root, root / "out_mid_stop")
    train(stopped)
    assert _load(Path(stopped.paths.ckpt_dir) / "last.ckpt")["global_step"] == 6
    train(compose_at([*base, "run_name=mid_epoch"], root, root / "out_mid_resume"))
    fresh = compose_at([*one_epoch_run["overrides"], "trainer.max_epochs=2", "run_name=uninterrupted"], root,
                       root / "out_fresh")  # fmt: skip
    if not (Path(fresh.paths.ckpt_dir) / "last.ckpt").exists():
        train(fresh)
    a = _load(Path(stopped.paths.ckpt_dir) / "last.ckpt")
    b = _load(Path(fresh.paths.ckpt_dir) / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 8
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=1e-5, atol=1e-6)


def test_resume_checkpoint_resolution(tmp_path):
    ckpt_dir, hpc_dir = tmp_path / "run/checkpoints", tmp_path / "run"
    assert resolve_resume_checkpoint(None, ckpt_dir, hpc_dir) is None
    assert resolve_resume_checkpoint("last", ckpt_dir, hpc_dir) is None  # nothing yet: fresh start
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "last.ckpt").write_bytes(b"x")
    assert resolve_resume_checkpoint("last", ckpt_dir, hpc_dir) == str(ckpt_dir / "last.ckpt")
    hpc = hpc_dir / "hpc_ckpt_3.ckpt"
    hpc.write_bytes(b"x")
    os.utime(ckpt_dir / "last.ckpt", (1, 1))  # the pre-emption checkpoint is newer
    assert resolve_resume_checkpoint("last", ckpt_dir, hpc_dir) == str(hpc)
    from croco.utils.config import ConfigError

    with pytest.raises(ConfigError, match=r"^ckpt_path=/nope.ckpt: no such checkpoint file"):
        resolve_resume_checkpoint("/nope.ckpt", ckpt_dir, hpc_dir)


def test_effective_batch_and_steps_per_epoch_count_accumulation(
    compose_train, tiny_shards, tiny_overrides, tmp_path
):
    cfg = compose_train(*tiny_overrides(tiny_shards, tmp_path), "trainer.max_steps=1", "optim.blr=1e-2",
                        "trainer.accumulate_grad_batches=2", "run_name=accumulate")  # fmt: skip
    train(cfg)
    ckpt = _load(Path(cfg.paths.ckpt_dir) / "last.ckpt")
    scheduler = ckpt["lr_schedulers"][0]
    assert scheduler["base_lrs"][0] == pytest.approx(
        1e-2 * 4 * 2 / 256
    )  # batch 4 x 1 device x 2 accumulation
    assert scheduler["lr_lambdas"][0]["steps_per_epoch"] == 2  # 4 batches per epoch / 2


@pytest.mark.slow
def test_smoke_overfits_a_few_pairs(compose_train, make_shards, tmp_path):
    """The smoke model memorises 4 pairs seen again and again with one fixed mask: loss falls >= 3x (about 10x
    after the 150 steps; the first ~60 are a plateau at 1, the loss of predicting the patch mean)."""
    import lightning.pytorch as pl

    from croco.tasks.reconstruction import fixed_mask

    four_pairs = make_shards(tmp_path / "four", pairs=4, scenes=1)
    cfg = compose_train(
        "experiment=smoke", f"data.sources=[{{path: '{four_pairs}'}}]", "data.generate_if_missing=null",
        "data.transforms=resize64+crop64", "data.batch_size=4", "data.num_workers=0", "data.pairs_per_epoch=4",
        "data.val_fraction=0.0", "trainer=cpu", "trainer.precision=32-true", "trainer.max_epochs=150",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "optim.lr=3e-3", "optim.warmup_epochs=5",
        "optim.epochs=1000", "callbacks=none", "logger=csv", "run_name=overfit",
    )  # fmt: skip
    from croco.data.datamodule import PairDataModule
    from croco.tasks.pretrain import PretrainTask
    from croco.utils.instantiate import instantiate

    pl.seed_everything(0)
    task: PretrainTask = instantiate(cfg.task)
    fixed = fixed_mask(4, 64, cfg.masking.ratio, seed=0)
    task.training_mask = lambda batch_size, num_patches, batch_idx, device: fixed.to(device)
    datamodule: PairDataModule = instantiate(cfg.data)
    trainer = instantiate(cfg.trainer, logger=instantiate(cfg.logger.csv), enable_checkpointing=False)
    trainer.fit(task, datamodule=datamodule)
    losses = [float(r["train/loss"]) for r in _metrics(Path(cfg.paths.output_dir)) if r.get("train/loss")]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last * 3 <= first, f"loss only went from {first:.3f} to {last:.3f}"


@pytest.mark.slow
def test_ddp_sim_two_processes(compose_train, tiny_shards, tiny_overrides, tmp_path):
    cfg = compose_train(*tiny_overrides(tiny_shards, tmp_path), "trainer=ddp_sim", "trainer.max_steps=2",
                        "trainer.enable_progress_bar=false", "optim.blr=2.56e-2", "run_name=ddp")  # fmt: skip
    train(cfg)
    ckpt = _load(Path(cfg.paths.ckpt_dir) / "last.ckpt")
    assert ckpt["global_step"] == 2
    # effective batch = 4 per device x 2 processes -> lr = 2.56e-2 * 8 / 256
    assert ckpt["lr_schedulers"][0]["base_lrs"][0] == pytest.approx(8e-4)


@pytest.mark.slow
def test_multirun_two_jobs(tiny_shards, tiny_overrides, tmp_path):
    overrides = [
        o for o in tiny_overrides(tiny_shards, tmp_path) if not o.startswith(("logger=", "data.sources"))
    ]
    env = dict(os.environ, WANDB_MODE="offline")
    run = subprocess.run(
        [sys.executable, "train.py", "-m", "experiment=smoke", "masking.ratio=0.5,0.9", *overrides,
         f"data.sources=[{{path: '{tiny_shards}'}}]", "trainer.max_steps=2", "logger=[csv,wandb]",
         f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("[0-9]"))
    assert [j.name for j in jobs] == ["0", "1"]
    groups, ratios, names = set(), [], set()
    for job in jobs:
        assert (job / ".hydra" / "overrides.yaml").is_file()
    for path in sorted((tmp_path / "logs/runs/smoke").glob("*/checkpoints/last.ckpt")):
        ckpt = _load(path)
        ratios.append(ckpt["hyper_parameters"]["mask_ratio"])
        groups.add(ckpt["cfg"]["logger"]["wandb"]["group"])
        names.add(ckpt["cfg"]["run_name"])
    assert sorted(ratios) == [0.5, 0.9] and len(names) == 2  # one run folder per job
    from croco.utils.runs import find_metrics

    for name in names:  # each run folder links its multirun launch: its metrics are found from the run
        metrics = find_metrics(tmp_path / "logs/runs" / name)
        assert metrics.resolve().is_relative_to((tmp_path / "sweep").resolve()) and metrics.stat().st_size > 0
    assert len(groups) == 1 and next(iter(groups)).startswith("smoke-")
    # W&B (offline): one run per job, in the shared group, with the swept value in its config and the panel
    group = next(iter(groups)).encode()
    runs = sorted((tmp_path / "sweep").glob("*/wandb/offline-run-*/*.wandb"))
    assert len(runs) == 2
    for record in runs:
        data = record.read_bytes()
        assert group in data and b"masking" in data
        assert list(record.parent.glob("files/media/images/val/panel_*.png"))
