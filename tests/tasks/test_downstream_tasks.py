"""The monocular downstream tasks end to end: every downstream experiment runs with ``fast_dev_run`` on small
files built here with the real datasets' structure, backbone initialisation reaches the network, and config
mistakes are one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from croco.models import CroCoNet
from croco.models.checkpoints import export_official_checkpoint
from croco.tasks.checks import validate_train_config
from croco.tasks.training import train
from croco.utils.config import ConfigError, model_preset
from croco.utils.instantiate import instantiate
from tests.data.dense_fixtures import write_ade, write_folders, write_nyu

pytestmark = pytest.mark.usefixtures("single_thread")

DENSE_SIZE = 48  # generated views; the tiny backbone trains on 64x64 crops of them


@pytest.fixture(scope="module")
def dense_shards(tmp_path_factory) -> Path:
    """24 pairs (12 scenes) of the embedded generator with task=depth: depth, surface classes, both views."""
    from croco.synth.pipeline import generate_pairs

    folder = tmp_path_factory.mktemp("dense") / "synthetic_dense"
    generate_pairs(folder, pairs=24, task="depth", resolution=DENSE_SIZE, pairs_per_scene=2, pairs_per_shard=12,
                   workers=0, progress=False, seed=3)  # fmt: skip
    return folder


def _common(root: Path) -> list[str]:
    return [
        "model=tiny", "data.img_size=64", "data.batch_size=4", "data.num_workers=0", "data.generate_if_missing=null",
        "trainer=cpu", "trainer.precision=32-true", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "logger=csv", f"paths.root_dir={root}",
    ]  # fmt: skip


def _nyu(tmp_path: Path) -> list[str]:
    root = write_nyu(tmp_path / "nyu", count=6, height=48, width=64, train=(1, 2, 3, 4), test=(5, 6))
    return [f"data.root={root}"]


def _ade(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    root = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        write_ade(root, {f"ADE_{split}_{i:08d}": rng.integers(0, 151, size=(40, 56)) for i in range(4)}, split)
    return [f"data.root={root}"]


def _imagenet(tmp_path: Path) -> list[str]:
    classes = {f"n{i:08d}": [f"{j}.JPEG" for j in range(3)] for i in range(5)}
    root = write_folders(tmp_path / "imagenet", {"train": classes, "val": classes}, size=40)
    return [f"data.root={root}", "task.num_classes=5"]


PAPER_SIZED = {"depth_nyu": _nyu, "seg_ade20k": _ade, "linprobe_imagenet": _imagenet}
SYNTHETIC = {"depth_synthetic": "d1", "seg_synthetic": "miou", "linprobe_synthetic": "top1"}
VAL_METRIC = {"depth_nyu": "d1", "seg_ade20k": "miou", "linprobe_imagenet": "top1", **SYNTHETIC}


@pytest.mark.parametrize("experiment", sorted(SYNTHETIC))
def test_synthetic_experiments_run_fast_dev_run(experiment, compose_train, dense_shards, tmp_path):
    cfg = compose_train(f"experiment={experiment}", *_common(tmp_path), f"data.root={dense_shards}",
                        "data.val_fraction=0.3", "trainer.fast_dev_run=true")  # fmt: skip
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    assert 0.0 <= metrics[f"val/{VAL_METRIC[experiment]}"] <= 1.0


@pytest.mark.parametrize("experiment", sorted(PAPER_SIZED))
def test_paper_sized_experiments_run_fast_dev_run_on_files_with_the_real_layout(experiment, compose_train, tmp_path):
    cfg = compose_train(f"experiment={experiment}", *_common(tmp_path), *PAPER_SIZED[experiment](tmp_path),
                        "trainer.fast_dev_run=true")  # fmt: skip
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    value = metrics[f"val/{VAL_METRIC[experiment]}"]
    assert math.isnan(value) or 0.0 <= value <= 1.0  # mIoU of 4 random maps may have no class seen


def test_backbone_init_reaches_the_network_and_a_frozen_probe_keeps_it(compose_train, dense_shards, tmp_path):
    kwargs = model_preset("tiny")
    pretrained = CroCoNet(**kwargs)
    path = export_official_checkpoint(pretrained, tmp_path / "pretrained.pth")
    cfg = compose_train("experiment=linprobe_synthetic", *_common(tmp_path), f"data.root={dense_shards}",
                        "data.val_fraction=0.3", f"finetune.init={path}")  # fmt: skip
    validate_train_config(cfg)
    task = instantiate(cfg.task)
    before_head = task.net.head.fc.weight.detach().clone()
    trainer = pl.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    trainer.fit(task, datamodule=instantiate(cfg.data))
    own = task.net.state_dict()
    for key, value in pretrained.state_dict().items():
        if key in own:
            assert torch.equal(own[key], value), key  # loaded, and frozen through two steps
    assert not torch.equal(task.net.head.fc.weight, before_head)  # the probe trained


def test_layer_decay_reaches_the_optimizer(compose_train, dense_shards, tmp_path):
    cfg = compose_train("experiment=depth_synthetic", *_common(tmp_path), f"data.root={dense_shards}",
                        "optim.layer_decay=0.5")  # fmt: skip
    task = instantiate(cfg.task)
    optimizer = task.configure_optimizers()["optimizer"]
    scale = {name: group["lr_scale"] for group in optimizer.param_groups for name in group["names"]}
    depths = 4 + 1  # tiny: 4 encoder blocks, then the norm + head
    assert scale["patch_embed.proj.weight"] == pytest.approx(0.5**depths)
    assert scale["enc_blocks.3.attn.qkv.weight"] == pytest.approx(0.5)
    assert scale["head.dpt.head.4.weight"] == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.target=segmentation", "data.target='segmentation': the task croco.tasks.depth.DepthTask needs"),
        ("finetune.init=/nonexistent/CroCo.pth", "finetune.init=/nonexistent/CroCo.pth: no such file"),
        ("finetune.freeze=encoder", "finetune.freeze='encoder': expected null, backbone"),
        ("data.root=/nonexistent/nyu", "data.root=/nonexistent/nyu: no such folder"),
    ],
)
def test_config_mistakes_are_one_line_errors(override, message, compose_train, tmp_path):
    cfg = compose_train("experiment=depth_synthetic", *_common(tmp_path), override)
    with pytest.raises(ConfigError) as info:
        validate_train_config(cfg)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_num_classes_must_match_the_data(compose_train, dense_shards, tmp_path):
    cfg = compose_train("experiment=seg_synthetic", *_common(tmp_path), f"data.root={dense_shards}",
                        "data.val_fraction=0.3", "task.num_classes=7", "trainer.fast_dev_run=true")  # fmt: skip
    with pytest.raises(ValueError, match="task.num_classes=7 but the data have 19 classes"):
        train(cfg)
