"""Evaluate a downstream checkpoint on its task's test (or validation) split: ``python eval.py ckpt=PATH``.

The task and its network are rebuilt from the checkpoint's hyper-parameters (no pickled code: the file is read
with ``weights_only``); the data come from the run's own data config, with ``data.*`` overrides applied (e.g.
``data.root=...`` for a dataset stored elsewhere). Writes ``metrics.json`` (the split's metrics, and with
``baseline=true`` those of the trivial predictor on the same samples) and ``panel.png`` (input, prediction, truth)
into ``out_dir``; for relative pose also ``pose.png`` (``croco.tasks.pose.plot_pose``: predicted against true
rotation, and the error distributions against the trivial predictor's).

Baselines. Monocular tasks, from one pass over the training split: depth, the training mean depth everywhere;
segmentation, the training class frequencies as constant logits (the majority class everywhere);
classification, the training label frequencies as constant logits (top-1: the majority label). Binocular tasks,
on the evaluation samples themselves (so the constant is the best one in hindsight): stereo, the median valid
disparity everywhere (the constant with the lowest mean absolute error); flow, zero flow; pose, the identity
rotation and the mean translation direction.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from croco.data.dense import IGNORE_INDEX
from croco.eval.dense import ClassificationMetrics, DepthMetrics, SegmentationMetrics
from croco.eval.stereoflow import FlowMetrics, PoseMetrics, StereoMetrics, constant_pose
from croco.models.checkpoints import CheckpointError, load_strict, load_weights_only, uncompiled_state
from croco.tasks.finetune import FinetuneTask
from croco.utils.files import atomic_output
from croco.utils.instantiate import instantiate

__all__ = ["DOWNSTREAM_TASKS", "evaluate", "load_task"]

log = logging.getLogger(__name__)

DOWNSTREAM_TASKS = {
    "croco.tasks.depth.DepthTask": "depth",
    "croco.tasks.segmentation.SegmentationTask": "segmentation",
    "croco.tasks.classification.ClassificationTask": "classification",
    "croco.tasks.stereoflow.StereoFlowTask": "stereoflow",  # the task's ``kind`` says which
    "croco.tasks.pose.PoseTask": "pose",
}
"""Tasks ``eval.py`` can rebuild, by the ``task._target_`` stored in the checkpoint, and their data target."""


def load_task(path: str | Path, ckpt: Any = None) -> tuple[FinetuneTask, dict[str, Any]]:
    """The task of a downstream Lightning checkpoint with its weights, and the run config it was trained with.
    ``ckpt``: the file's content when the caller has already read it."""
    ckpt = load_weights_only(path) if ckpt is None else ckpt
    run_cfg = ckpt.get("cfg") if isinstance(ckpt, dict) else None
    target = (run_cfg or {}).get("task", {}).get("_target_")
    if target not in DOWNSTREAM_TASKS:
        raise CheckpointError(f"{path}: task {target!r} is not a downstream task; allowed: "
                              f"{', '.join(DOWNSTREAM_TASKS)} (checkpoints written by train.py)")  # fmt: skip
    module, name = target.rsplit(".", 1)
    task_class = getattr(importlib.import_module(module), name)
    hparams = dict(ckpt["hyper_parameters"])
    hparams["finetune"] = {**hparams["finetune"], "init": "scratch"}  # the weights come from this file
    task = task_class(**hparams)
    mismatch = load_strict(task, uncompiled_state(ckpt["state_dict"]))
    if mismatch:
        raise CheckpointError(f"{path}: weights do not match the stored task arguments: {mismatch}")
    return task.eval(), run_cfg


def _constant_predictor(kind: str, loader: Any, num_classes: int | None) -> torch.Tensor:
    """Depth: the mean valid training depth; otherwise the training (pixel or label) frequencies."""
    if kind == "depth":
        total, count = torch.zeros((), dtype=torch.float64), 0
        for batch in tqdm(loader, desc="baseline: training mean depth", leave=False):
            depth = batch["depth"]
            valid = torch.isfinite(depth) & (depth > 0)
            total += depth[valid].double().sum()
            count += int(valid.sum())
        return (total / max(count, 1)).float()
    key = "segmentation" if kind == "segmentation" else "label"
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for batch in tqdm(loader, desc="baseline: training class frequencies", leave=False):
        labels = batch[key].reshape(-1)
        labels = labels[(labels != IGNORE_INDEX) & (labels >= 0) & (labels < num_classes)]
        counts += torch.bincount(labels, minlength=num_classes).double()
    return (counts / counts.sum().clamp_min(1)).float()


def binocular_baseline(kind: str, eval_loader: Any) -> dict[str, float]:
    """Metrics of the best constant predictor in hindsight (module docstring) on ``eval_loader``."""
    batches = list(tqdm(eval_loader, desc="baseline: evaluation samples", leave=False))
    if kind == "pose":
        rotations = torch.cat([b["rotation"] for b in batches]).float()
        directions = torch.cat([b["translation"] for b in batches]).float()
        metrics: Any = PoseMetrics()
        metrics.update(*constant_pose(rotations, directions), rotations, directions)
        return {k: float(v) for k, v in metrics.compute().items()}
    key = "disparity" if kind == "stereo" else "flow"
    if kind == "stereo":
        values = torch.cat([b[key][torch.isfinite(b[key])].float() for b in batches])
        constant = float(values.median()) if values.numel() else 0.0
        metrics = StereoMetrics()
    else:
        constant = 0.0
        metrics = FlowMetrics()
    for batch in batches:
        gt = batch[key].float()
        metrics.update(torch.full_like(gt, constant).nan_to_num(0.0, 0.0, 0.0), gt)
    out = {k: float(v) for k, v in metrics.compute().items()}
    out["constant"] = constant
    return out


def baseline_metrics(kind: str, task: FinetuneTask, train_loader: Any, eval_loader: Any) -> dict[str, float]:
    """Metrics of the constant predictor (module docstring) on ``eval_loader``, with the task's own metrics."""
    if kind in ("stereo", "flow", "pose"):
        return binocular_baseline(kind, eval_loader)
    num_classes = getattr(task, "num_classes", None)
    constant = _constant_predictor(kind, train_loader, num_classes)
    if kind == "depth":
        hp = task.hparams
        metrics: Any = DepthMetrics(min_depth=hp.min_depth, max_depth=hp.max_depth, eigen_crop=hp.eigen_crop)
    elif kind == "segmentation":
        metrics = SegmentationMetrics(num_classes)
    else:
        metrics = ClassificationMetrics(num_classes)
    for batch in tqdm(eval_loader, desc="baseline: evaluation", leave=False):
        if kind == "depth":
            metrics.update(torch.full_like(batch["depth"], float(constant)), batch["depth"])
        elif kind == "segmentation":
            target = batch["segmentation"]
            logits = constant.view(1, -1, 1, 1).expand(target.shape[0], -1, *target.shape[-2:])
            metrics.update(logits, target)
        else:
            metrics.update(constant.expand(batch["label"].shape[0], -1), batch["label"])
    out = {k: float(v) for k, v in metrics.compute().items()}
    out["constant"] = float(constant) if kind == "depth" else int(constant.argmax())
    return out


def _first_samples(loader: Any, count: int) -> dict[str, torch.Tensor]:
    batches, taken = [], 0
    for batch in loader:
        batches.append({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
        taken += next(iter(batches[-1].values())).shape[0]
        if taken >= count:
            break
    return {k: torch.cat([b[k] for b in batches])[:count] for k in batches[0]}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation ``cfg`` (``conf/eval.yaml``) describes; returns what ``metrics.json`` holds."""
    task, run_cfg = load_task(cfg.ckpt)
    kind = DOWNSTREAM_TASKS[run_cfg["task"]["_target_"]]
    if kind == "stereoflow":
        kind = task.kind
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.get("data") or {}).items() if v is not None}
    data_cfg = OmegaConf.merge(OmegaConf.create(run_cfg["data"]), overrides)
    datamodule = instantiate(data_cfg)
    split = str(cfg.split)
    if split not in ("test", "val"):
        raise ValueError(f"split={split!r}: expected test or val")
    trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, precision=cfg.precision, logger=False,
                         enable_checkpointing=False, enable_model_summary=False)  # fmt: skip
    run = trainer.test if split == "test" else trainer.validate
    results = run(task, datamodule=datamodule, verbose=False)[0]
    prefix = f"{split}/"
    out: dict[str, Any] = {
        "checkpoint": str(cfg.ckpt), "task": kind, "split": split, "data": OmegaConf.to_container(data_cfg),
        "samples": len(datamodule.data_test if split == "test" else datamodule.data_val),
        "metrics": {k[len(prefix):]: float(v) for k, v in results.items() if k.startswith(prefix)},
    }  # fmt: skip
    eval_loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    if cfg.baseline:
        train_loader = None
        if kind in ("depth", "segmentation", "classification"):
            datamodule.setup("fit")
            train_loader = datamodule.train_dataloader()
        out["baseline"] = baseline_metrics(kind, task, train_loader, eval_loader)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
    if cfg.num_panel > 0:
        panel = task.render_panel(_first_samples(eval_loader, int(cfg.num_panel)))
        with atomic_output(out_dir / "panel.png") as tmp:
            panel.save(tmp, format="PNG")
    if kind == "pose":
        from croco.tasks.pose import plot_pose

        plot_pose(task, tqdm(eval_loader, desc="pose figure", leave=False), out_dir / "pose.png",
                  title=f"relative pose on the {out['samples']} {split} pairs: {cfg.ckpt}")  # fmt: skip
    log.info("%s", _summary(out))
    return out


def _summary(out: Mapping[str, Any]) -> str:
    def fmt(values: Mapping[str, float]) -> str:
        return ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "constant")

    text = f"{out['task']} {out['split']} ({out['samples']} samples): {fmt(out['metrics'])}"
    if "baseline" in out:
        text += f" | constant predictor: {fmt(out['baseline'])}"
    return text
