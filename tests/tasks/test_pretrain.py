"""PretrainTask: hyper-parameters, official-weight initialisation, deterministic training masks."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from croco.data.datamodule import PairDataModule
from croco.models import CroCoNet, export_official_checkpoint
from croco.tasks.pretrain import PretrainTask

TINY = {"img_size": 64, "patch_size": 8, "enc_embed_dim": 32, "enc_depth": 1, "enc_num_heads": 2,
        "dec_embed_dim": 32, "dec_depth": 1, "dec_num_heads": 2, "pos_embed": "RoPE100"}  # fmt: skip


def test_hyperparameters_are_plain_values():
    task = PretrainTask(model=TINY, mask_ratio=0.75, optim={"blr": 1e-3, "warmup_epochs": 1, "epochs": 5})
    hp = dict(task.hparams)
    assert hp["model"] == TINY and hp["mask_ratio"] == 0.75
    assert hp["optim"]["blr"] == 1e-3 and hp["optim"]["betas"] == [0.9, 0.95]
    assert all(isinstance(v, dict | float | int | bool | str | type(None)) for v in hp.values())
    assert task.net.mask_generator.mask_ratio == 0.75
    with pytest.raises(ValueError, match="mask_ratio belongs|the mask ratio is masking.ratio"):
        PretrainTask(model={**TINY, "mask_ratio": 0.5})
    with pytest.raises(ValueError, match="mask_ratio=1.0: expected a number strictly between 0 and 1"):
        PretrainTask(model=TINY, mask_ratio=1.0)


def test_training_masks_depend_on_seed_step_and_batch_only():
    task = PretrainTask(model=TINY, mask_ratio=0.75, mask_seed=3)
    a = task.training_mask(2, 64, batch_idx=0, device=torch.device("cpu"))
    assert a.shape == (2, 64) and (a.sum(1) == 48).all()
    assert torch.equal(a, task.training_mask(2, 64, batch_idx=0, device=torch.device("cpu")))
    assert not torch.equal(a, task.training_mask(2, 64, batch_idx=1, device=torch.device("cpu")))
    other_seed = PretrainTask(model=TINY, mask_ratio=0.75, mask_seed=4)
    assert not torch.equal(a, other_seed.training_mask(2, 64, batch_idx=0, device=torch.device("cpu")))
    assert PretrainTask(model=TINY, mask_seed=None).training_mask(2, 64, 0, torch.device("cpu")) is None


def test_init_from_official_weights(tiny_shards, tmp_path, single_thread):
    torch.manual_seed(1)
    official = CroCoNet(**TINY)
    path = export_official_checkpoint(official, tmp_path / "official.pth")
    task = PretrainTask(model=TINY, init_from=str(path), optim={"warmup_epochs": 1, "epochs": 2})
    assert not torch.equal(task.net.mask_token, official.mask_token)  # applied when fitting starts
    datamodule = PairDataModule(sources=[str(tiny_shards)], img_size=64, transforms="crop64", batch_size=4,
                                num_workers=0, pairs_per_epoch=4, val_fraction=0.0)  # fmt: skip
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(task, datamodule=datamodule)
    # the first optimizer step runs at lr 0 (warm-up starts at 0), so the weights are still the official ones
    for key, value in official.state_dict().items():
        assert torch.equal(task.net.state_dict()[key], value), key


def test_init_from_a_different_architecture_is_one_line(tmp_path):
    path = export_official_checkpoint(CroCoNet(**{**TINY, "enc_embed_dim": 64}), tmp_path / "wide.pth")
    task = PretrainTask(model=TINY, init_from=str(path))
    with pytest.raises(ValueError) as err:
        task._load_official_weights(path)
    assert str(err.value).startswith(f"init_from={path}: weights do not fit the model preset")
    assert "\n" not in str(err.value)


def test_clip_grad_bounds_the_global_norm(tiny_shards, single_thread):
    """optim.clip_grad clips the global L2 norm of the gradients that the optimizer step uses."""
    norms: list[float] = []

    class RecordNorm(pl.Callback):
        def on_before_zero_grad(self, trainer, pl_module, optimizer):  # grads of the step just taken
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            if grads:
                norms.append(float(torch.nn.utils.get_total_norm(grads)))

    task = PretrainTask(model=TINY, optim={"lr": 1e-3, "warmup_epochs": 0, "epochs": 2, "clip_grad": 1e-3})
    datamodule = PairDataModule(sources=[str(tiny_shards)], img_size=64, transforms="crop64", batch_size=4,
                                num_workers=0, pairs_per_epoch=8, val_fraction=0.0)  # fmt: skip
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[RecordNorm()])  # fmt: skip
    trainer.fit(task, datamodule=datamodule)
    assert norms and all(n <= 1e-3 * (1 + 1e-4) for n in norms)


class RecordFirstMask(pl.Callback):
    """Saves, on every rank, the first training mask the task draws (``mask_seed`` null: its own generator)."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_train_start(self, trainer, pl_module):
        mask = pl_module.training_mask(4, 64, batch_idx=0, device=torch.device("cpu"))
        torch.save(mask, f"{self.folder}/mask_rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ranks_draw_different_masks_without_a_mask_seed(tiny_shards, tmp_path):
    """With mask_seed null every rank seeds its masks by the global seed plus its rank, as the official code does
    (ddp_spawn on two CPU processes, the ddp_sim trainer)."""
    pl.seed_everything(0)
    task = PretrainTask(model=TINY, mask_ratio=0.75, mask_seed=None, optim={"warmup_epochs": 1, "epochs": 2})
    datamodule = PairDataModule(sources=[str(tiny_shards)], img_size=64, transforms="crop64", batch_size=2,
                                num_workers=0, pairs_per_epoch=8, val_fraction=0.0)  # fmt: skip
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RecordFirstMask(str(tmp_path))])  # fmt: skip
    trainer.fit(task, datamodule=datamodule)
    masks = [torch.load(tmp_path / f"mask_rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert all(m is not None and m.shape == (4, 64) and (m.sum(1) == 48).all() for m in masks)
    assert not torch.equal(masks[0], masks[1])


def test_validation_logs_the_crossview_health_metric(tiny_shards, tmp_path, single_thread):
    """Every validation epoch logs val/crossview/*: "true" is val/loss (the sanity check, run with other
    weights, leaves no trace), other and blank use the same masks, and gaps come per overlap bin."""
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    task = PretrainTask(model=TINY, mask_ratio=0.75, optim={"lr": 1e-3, "warmup_epochs": 0, "epochs": 2})
    datamodule = PairDataModule(sources=[str(tiny_shards)], img_size=64, transforms="crop64", batch_size=4,
                                num_workers=0, pairs_per_epoch=8, val_fraction=0.3)  # fmt: skip
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=CSVLogger(tmp_path, name="csv", version=""),
                         limit_val_batches=2, num_sanity_val_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(task, datamodule=datamodule)
    metrics = {k: v.item() for k, v in trainer.logged_metrics.items()}
    prefix = "val/crossview/"
    for key in ("loss_true", "loss_other", "loss_blank", "gap_other", "gap_blank", "gap_other_0.7-1.0"):
        assert prefix + key in metrics, sorted(metrics)
    assert prefix + "gap_other_0.0-0.3" not in metrics  # the tiny shards overlap by more than 0.6: empty bin
    assert metrics[prefix + "loss_true"] == pytest.approx(metrics["val/loss"], rel=1e-6)
    gap = (metrics[prefix + "loss_other"] - metrics[prefix + "loss_true"]) / metrics[prefix + "loss_other"]
    assert metrics[prefix + "gap_other"] == pytest.approx(gap, rel=1e-5, abs=1e-7)
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {prefix + "gap_other", prefix + "loss_blank", prefix + "gap_other_0.7-1.0"} <= set(header)


def test_panel_adds_a_reconstruction_from_another_scene_and_says_how_it_is_made():
    task = PretrainTask(model=TINY, mask_ratio=0.75)
    samples = {"img1": torch.randn(3, 3, 64, 64), "img2": torch.randn(3, 3, 64, 64)}
    panel = task.render_panel(samples)
    assert panel.width == 5 * 128 + 6 * 2  # 64 px cells upscaled x2, five columns
    assert panel.height > 14 + 3 * (128 + 2) + 2  # a title above the column names
    assert "mean and variance" in task.panel_caption and "another scene's view 2" in task.panel_caption
    single = task.render_panel({k: v[:1] for k, v in samples.items()})  # no other sample: a grey view 2
    assert single.width == panel.width


@pytest.mark.slow
def test_crossview_sums_are_reduced_over_ranks(tiny_shards):
    """Two ranks (ddp_spawn on CPU) each see half of the validation pairs: the logged loss_true is the mean
    over all of them, i.e. Lightning's synced val/loss (equal halves), not rank 0's own mean."""
    pl.seed_everything(0)
    task = PretrainTask(model=TINY, mask_ratio=0.75, optim={"lr": 1e-3, "warmup_epochs": 0, "epochs": 2})
    datamodule = PairDataModule(sources=[str(tiny_shards)], img_size=64, transforms="crop64", batch_size=4,
                                num_workers=0, pairs_per_epoch=8, val_fraction=0.3)  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    trainer.validate(task, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["val/crossview/loss_true"] == pytest.approx(metrics["val/loss"], rel=1e-5)
    assert "val/crossview/gap_other" in metrics and "val/crossview/gap_blank" in metrics
