"""Start-up checks of a composed training config: one-line errors that name the key and the allowed values.

Typos and impossible combinations otherwise surface minutes later, deep inside model or data code, as a shape
mismatch or a stack trace. ``validate_train_config`` runs before anything is built. Checks shared by every task
(model preset, optimiser recipe, launch, data folders) run for all; a task adds its own through ``TASK_CHECKS``,
keyed by its ``task._target_`` (pretraining checks the mask ratio, and that the data size equals the model size,
which a fine-tuning task need not require).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from croco.data.index import check_sources
from croco.data.shards import ShardError
from croco.models.masking import check_mask_ratio, num_masked
from croco.tasks.optim import OptimRecipe
from croco.utils.config import ConfigError
from croco.utils.sizes import as_hw

__all__ = ["FINETUNE_DEFAULTS", "TASK_CHECKS", "finetune_settings", "validate_train_config"]

Check = Callable[[DictConfig], None]


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def _hw(cfg: DictConfig, key: str, default: Any = None) -> tuple[int, int]:
    try:
        return as_hw(_get(cfg, key, default), key)
    except ValueError as e:
        raise ConfigError(str(e)) from None


# ------------------------------------------------------------------------------------------ every task
def check_model(cfg: DictConfig) -> None:
    if _get(cfg, "model") is None:
        raise ConfigError("model: no model preset selected; choose one with model=<preset>")
    patch = _get(cfg, "model.patch_size", 16)
    if isinstance(patch, bool) or not isinstance(patch, int) or patch <= 0:
        raise ConfigError(f"model.patch_size={patch!r}: expected a positive integer (e.g. 16)")
    h, w = _hw(cfg, "model.img_size", 224)
    if h % patch or w % patch:
        raise ConfigError(
            f"model.img_size={_get(cfg, 'model.img_size')}: not divisible by model.patch_size={patch}; allowed: "
            f"positive multiples of {patch} (e.g. {max(patch, round(h / patch) * patch)})"
        )
    decoder = _get(cfg, "model.decoder", "cross")
    if decoder not in ("cross", "cat"):
        raise ConfigError(f"model.decoder={decoder!r}: expected one of cross, cat")
    pos = _get(cfg, "model.pos_embed", "cosine")
    if pos != "cosine" and not re.fullmatch(r"RoPE\d+(\.\d+)?", str(pos)):
        raise ConfigError(f"model.pos_embed={pos!r}: expected cosine or RoPE<base> (e.g. RoPE100)")


def check_optim(cfg: DictConfig) -> None:
    """The recipe's own checks (``OptimRecipe``), reported as config errors."""
    optim = _get(cfg, "optim")
    if optim is None:
        return
    try:
        OptimRecipe.from_mapping(OmegaConf.to_container(optim, resolve=True))
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def check_data_folders(cfg: DictConfig) -> None:
    """Folders that must already hold data, when nothing may generate them: every pretraining source (shards),
    a downstream dataset's root."""
    if _get(cfg, "data.generate_if_missing") is not None:
        return
    root = _get(cfg, "data.root")
    if _get(cfg, "data.sources") is None:
        if root is not None and not os.path.isdir(root):
            raise ConfigError(f"data.root={root}: no such folder; put the dataset there (docs/downstream.md) or "
                              "set data.root")  # fmt: skip
        return
    try:
        check_sources(_get(cfg, "data.sources") or [])
    except (ShardError, ValueError) as e:
        raise ConfigError(f"{e} (data.generate_if_missing is null: generate or import the data first)") from None


def _relaunches_script(strategy: Any) -> bool:
    """Whether a strategy starts its ranks by re-running the command line (Lightning's subprocess DDP)."""
    if isinstance(strategy, str):
        return strategy.startswith("ddp") and "spawn" not in strategy and "fork" not in strategy
    if isinstance(strategy, DictConfig | dict):
        target = str(strategy.get("_target_", ""))
        return target.endswith("DDPStrategy") and strategy.get("start_method", "popen") == "popen"
    return False


def check_launch(cfg: DictConfig, environ: Mapping[str, str] = os.environ) -> None:
    """A local multirun must not use subprocess DDP: every rank would re-run the whole sweep
    (facebookresearch/hydra#2070)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or "SLURM_PROCID" in environ:
        return
    devices, nodes = _get(cfg, "trainer.devices", 1), _get(cfg, "trainer.num_nodes", 1)
    if not (isinstance(devices, int) and isinstance(nodes, int)) or devices * nodes <= 1:
        return
    if _relaunches_script(_get(cfg, "trainer.strategy")):
        raise ConfigError(
            f"trainer.strategy: subprocess DDP on {devices * nodes} devices inside a multirun would relaunch the "
            "whole sweep from every rank; allowed: hydra/launcher=slurm (SLURM starts one task per GPU) or "
            "trainer.strategy=ddp_spawn"
        )


# ------------------------------------------------------------------------------------------ pretraining
def check_pretraining(cfg: DictConfig) -> None:
    """The mask ratio is in (0, 1) and masks at least one patch; the data come at the model's size."""
    try:
        ratio = check_mask_ratio(_get(cfg, "masking.ratio"), "masking.ratio")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    patch = _get(cfg, "model.patch_size", 16)
    h, w = _hw(cfg, "model.img_size", 224)
    grid = (h // patch) * (w // patch)
    if num_masked(grid, ratio) < 1:
        raise ConfigError(
            f"masking.ratio={ratio}: masks no patch of the {h // patch}x{w // patch} grid; allowed: at least "
            f"{1 / grid:.4f}"
        )
    if _get(cfg, "data.img_size") is not None and _hw(cfg, "data.img_size") != (h, w):
        raise ConfigError(
            f"data.img_size={_get(cfg, 'data.img_size')} differs from model.img_size={_get(cfg, 'model.img_size')}; "
            "allowed: the same size as the model"
        )


# ------------------------------------------------------------------------------------------ downstream
FINETUNE_DEFAULTS: dict[str, Any] = {"init": "scratch", "init_head": False, "freeze": None, "drop_path": 0.0}
"""Keys of ``conf/finetune/*.yaml``."""


def finetune_settings(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``finetune`` mapping with defaults filled in; unknown keys and bad values are one-line errors."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(FINETUNE_DEFAULTS))
    if unknown:
        raise ValueError(f"finetune: unknown key(s) {unknown}; allowed: {', '.join(FINETUNE_DEFAULTS)}")
    out = {**FINETUNE_DEFAULTS, **values}
    init = out["init"]
    if init is None or str(init) in ("", "scratch", "null"):
        out["init"] = "scratch"
    else:
        out["init"] = str(init)
    freeze_value = out["freeze"]
    if not (freeze_value is None or freeze_value == "backbone" or
            (isinstance(freeze_value, int) and not isinstance(freeze_value, bool) and freeze_value >= 0)):  # fmt: skip
        raise ValueError(f"finetune.freeze={freeze_value!r}: expected null, backbone or a number of encoder blocks")
    if not isinstance(out["init_head"], bool):
        raise ValueError(f"finetune.init_head={out['init_head']!r}: expected true or false")  # noqa: TRY004
    rate = out["drop_path"]
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise ValueError(f"finetune.drop_path={rate!r}: expected a rate in [0, 1)")
    out["drop_path"] = float(rate)
    return out


def check_finetune(cfg: DictConfig) -> None:
    """``finetune`` keys and values; an initialisation file must exist (read when the fit starts)."""
    try:
        settings = finetune_settings(OmegaConf.to_container(_get(cfg, "finetune", {}), resolve=True))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    init = settings["init"]
    if init != "scratch" and not os.path.isfile(init):
        raise ConfigError(f"finetune.init={init}: no such file; allowed: scratch, a Lightning .ckpt of this "
                          "project or an official CroCo .pth")  # fmt: skip


def _check_target(expected: str) -> Check:
    """The data give the task's ground truth; ``expected`` "kind" means the task's own ``kind`` key."""

    def check(cfg: DictConfig) -> None:
        wanted = _get(cfg, "task.kind") if expected == "kind" else expected
        target = _get(cfg, "data.target")
        if target != wanted:
            raise ConfigError(f"data.target={target!r}: the task {_get(cfg, 'task._target_')} needs "
                              f"data.target={wanted} (a downstream data config, e.g. data=dense_synthetic)")  # fmt: skip

    return check


TASK_CHECKS: dict[str, tuple[Check, ...]] = {
    "croco.tasks.pretrain.PretrainTask": (check_pretraining,),
    "croco.tasks.depth.DepthTask": (check_finetune, _check_target("depth")),
    "croco.tasks.segmentation.SegmentationTask": (check_finetune, _check_target("segmentation")),
    "croco.tasks.classification.ClassificationTask": (check_finetune, _check_target("classification")),
    "croco.tasks.stereoflow.StereoFlowTask": (check_finetune, _check_target("kind")),
    "croco.tasks.pose.PoseTask": (check_finetune, _check_target("pose")),
}
"""The checks of each task, by the ``task._target_`` that selects it (``conf/task/``)."""


def validate_train_config(cfg: DictConfig, *, check_data: bool = True) -> None:
    """All start-up checks; raises :class:`ConfigError` with a one-line message at the first problem."""
    target = _get(cfg, "task._target_")
    if target not in TASK_CHECKS:
        raise ConfigError(f"task._target_={target!r}: not a task; allowed: {', '.join(TASK_CHECKS)}")
    for check in TASK_CHECKS[target]:
        check(cfg)
    check_model(cfg)
    check_optim(cfg)
    check_launch(cfg)
    if check_data:
        check_data_folders(cfg)
