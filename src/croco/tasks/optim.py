"""The CroCo optimisation recipe (naver/croco ``pretrain.py`` and ``utils/misc.py``): AdamW with no weight decay
on biases and 1-D parameters, lr = blr x effective batch / 256, and one per-step schedule: linear warm-up from 0,
then half-cycle cosine.

The schedule runs in *fractional epochs* with a cosine horizon (``epochs``) that is independent of where
training stops (``trainer.max_epochs``): CroCo v1 warms up for 40 epochs, plans a cosine over 800 and stops at
400, where the lr is still about half its peak. Every task shares these functions.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

__all__ = [
    "LayerOf",
    "OptimRecipe",
    "WarmupCosineLambda",
    "build_optimizer",
    "build_scheduler",
    "fused_adamw_supported",
    "param_groups",
    "rebase_scheduler",
    "scaled_lr",
    "warmup_cosine_lr",
]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class OptimRecipe:
    """Optimiser and schedule settings; the keys of ``conf/optim/*.yaml``.

    ``lr`` null means ``blr * effective_batch / 256``; a number is used as is (no scaling).
    ``epochs`` is the cosine horizon, in epochs (fractional epochs are allowed everywhere).
    ``clip_grad`` null means no clipping (the official recipe); otherwise the max global L2 norm.
    ``layer_decay`` < 1 scales the lr of each depth of the network by ``layer_decay ** (top - depth)``
    (layer-wise lr decay of BEiT / MAE fine-tuning; the task says what a depth is); 1 means none (pretraining).
    ``fused``: AdamW's fused kernel (one kernel for all parameters; the same update to float rounding); null
    uses it wherever this torch has it for the parameters' device (CUDA, and the CPU in recent releases).
    """

    blr: float = 1.5e-4
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_epochs: float = 40.0
    epochs: float = 800.0
    clip_grad: float | None = None
    layer_decay: float = 1.0
    fused: bool | None = None

    def __post_init__(self) -> None:
        """The one set of checks of the recipe's values (configs are checked through it at start-up)."""
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        warmup, epochs = self.warmup_epochs, self.epochs
        if not _is_number(warmup) or warmup < 0:
            raise ValueError(f"optim.warmup_epochs={warmup!r}: expected a number >= 0")
        if not _is_number(epochs) or epochs <= warmup:
            raise ValueError(f"optim.epochs={epochs!r}: expected the cosine horizon > optim.warmup_epochs={warmup}")
        for key in ("blr", "weight_decay", "min_lr", "eps"):
            value = getattr(self, key)
            if not _is_number(value) or value < 0:
                raise ValueError(f"optim.{key}={value!r}: expected a number >= 0")
        if self.lr is not None and (not _is_number(self.lr) or self.lr <= 0):
            raise ValueError(f"optim.lr={self.lr!r}: expected null (lr = blr * effective batch / 256) or a number > 0")
        if not _is_number(self.layer_decay) or not 0 < self.layer_decay <= 1:
            raise ValueError(f"optim.layer_decay={self.layer_decay!r}: expected a number in (0, 1] (1: no decay)")
        if self.clip_grad is not None and (not _is_number(self.clip_grad) or self.clip_grad <= 0):
            raise ValueError(f"optim.clip_grad={self.clip_grad!r}: expected null (no clipping) or a max norm > 0")
        if self.fused is not None and not isinstance(self.fused, bool):
            raise ValueError(f"optim.fused={self.fused!r}: expected null (where supported), true or false")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | OptimRecipe | None) -> OptimRecipe:
        """Build from a config mapping; unknown keys raise a one-line error listing the known ones."""
        if isinstance(values, OptimRecipe):
            return values
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"optim: unknown key(s) {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out


def warmup_cosine_lr(
    epoch: float, *, peak_lr: float, warmup_epochs: float, epochs: float, min_lr: float = 0.0
) -> float:
    """The learning rate at fractional ``epoch`` (the official ``adjust_learning_rate``).

    ``epoch < warmup``: ``peak * epoch / warmup`` (starts at exactly 0). Afterwards
    ``min_lr + (peak - min_lr) * 0.5 * (1 + cos(pi * (epoch - warmup) / (epochs - warmup)))``.
    Past the horizon the official formula would rise again; here it stays at ``min_lr``.
    """
    if epoch < warmup_epochs:
        return peak_lr * epoch / warmup_epochs
    progress = min((epoch - warmup_epochs) / (epochs - warmup_epochs), 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class WarmupCosineLambda:
    """``LambdaLR`` factor at optimizer step ``k``: ``warmup_cosine_lr(k / steps_per_epoch) / peak``.

    A dataclass rather than a closure, so ``LambdaLR.state_dict()`` stores (and a resume restores) its fields.
    ``min_lr_ratio`` is ``min_lr / peak_lr`` so that every param group gets the same shape of schedule.
    """

    steps_per_epoch: float
    warmup_epochs: float
    epochs: float
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        return warmup_cosine_lr(
            step / self.steps_per_epoch,
            peak_lr=1.0,
            warmup_epochs=self.warmup_epochs,
            epochs=self.epochs,
            min_lr=self.min_lr_ratio,
        )


def _no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Official rule: biases and every parameter with ndim <= 1 (LayerNorm weights and biases) get none."""
    return param.ndim <= 1 or name.endswith(".bias")


LayerOf = Callable[[str], tuple[int, int]]
"""``name -> (depth of the parameter, number of depths)``, for layer-wise lr decay."""


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    layer_of: LayerOf | None = None,
    layer_decay: float = 1.0,
) -> list[dict[str, Any]]:
    """AdamW groups: ``decay`` (weight matrices, conv kernels, mask token) and ``no_decay``, split further by
    depth when ``layer_of`` is given and ``layer_decay`` < 1; each group's ``lr_scale`` is
    ``layer_decay ** (number of depths - 1 - depth)``.

    Frozen parameters (``requires_grad=False``) are left out. Each group carries its ``names`` for inspection;
    torch ignores extra keys in a param group.
    """
    by_depth = layer_of is not None and layer_decay < 1.0
    groups: dict[tuple[str, int], dict[str, Any]] = {}

    def group_of(kind: str, depth: int, scale: float) -> dict[str, Any]:
        return groups.setdefault((kind, depth), {
            "params": [], "names": [], "weight_decay": weight_decay if kind == "decay" else 0.0,
            "group": f"{kind}/depth{depth}" if by_depth else kind, "lr_scale": scale,
        })  # fmt: skip

    if not by_depth:  # always the two official groups, in this order
        group_of("decay", 0, 1.0), group_of("no_decay", 0, 1.0)
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        kind = "no_decay" if _no_weight_decay(name, param) else "decay"
        depth, scale = 0, 1.0
        if by_depth:
            depth, count = layer_of(name)
            scale = layer_decay ** (count - 1 - depth)
        group = group_of(kind, depth, scale)
        group["params"].append(param)
        group["names"].append(name)
    order = sorted(groups, key=lambda key: (key[0] != "decay", key[1]))
    return [groups[key] for key in order]


def scaled_lr(recipe: OptimRecipe, effective_batch_size: int) -> float:
    """``recipe.lr`` when given, else ``blr * effective_batch_size / 256`` (the MAE/CroCo linear scaling rule)."""
    if recipe.lr is not None:
        return float(recipe.lr)
    if effective_batch_size <= 0:
        raise ValueError(f"effective batch size must be > 0, got {effective_batch_size}")
    return recipe.blr * effective_batch_size / 256.0


@functools.cache
def fused_adamw_supported(device_type: str) -> bool:
    """Whether this torch has the fused AdamW kernel for ``device_type`` (probed once with one step)."""
    try:
        probe = nn.Parameter(torch.zeros(1, device=device_type))
        probe.grad = torch.zeros_like(probe)
        torch.optim.AdamW([probe], fused=True).step()
    except (RuntimeError, ValueError):
        return False
    return True


def build_optimizer(
    model: nn.Module, recipe: OptimRecipe, lr: float, layer_of: LayerOf | None = None
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; each group's lr is ``lr x lr_scale`` (its peak, followed by the schedule).
    Fused as ``recipe.fused`` says (null: where supported for the parameters' device)."""
    groups = param_groups(model.named_parameters(), recipe.weight_decay, layer_of, recipe.layer_decay)
    groups = [{**g, "lr": lr * g["lr_scale"]} for g in groups if g["params"]]
    device_type = next((p.device.type for g in groups for p in g["params"]), "cpu")
    fused = fused_adamw_supported(device_type) if recipe.fused is None else recipe.fused
    if fused and not fused_adamw_supported(device_type):
        raise ValueError(f"optim.fused=true: torch {torch.__version__} has no fused AdamW for {device_type}; "
                         "use null (fused where supported) or false")  # fmt: skip
    return torch.optim.AdamW(groups, lr=lr, betas=recipe.betas, eps=recipe.eps, fused=fused or None)


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: OptimRecipe, steps_per_epoch: float, peak_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimizer-step ``LambdaLR``; at construction the lr is set to the step-0 value (0 during warm-up)."""
    if steps_per_epoch <= 0 or not math.isfinite(steps_per_epoch):
        raise ValueError(f"steps_per_epoch must be a positive finite number, got {steps_per_epoch}")
    factor = WarmupCosineLambda(
        steps_per_epoch=float(steps_per_epoch),
        warmup_epochs=float(recipe.warmup_epochs),
        epochs=float(recipe.epochs),
        min_lr_ratio=(recipe.min_lr / peak_lr) if peak_lr > 0 else 0.0,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)


def rebase_scheduler(
    scheduler: torch.optim.lr_scheduler.LambdaLR, steps_per_epoch: float, peak_lr: float, min_lr: float = 0.0
) -> float | None:
    """Put a schedule on this launch's steps per epoch and peak lr, keeping its position in epochs.

    Called at the start of every launch: a fresh run's schedule is built before the train data are loaded, and
    a resumed run may have another device count, accumulation or ``limit_train_batches`` than the run that wrote
    the checkpoint (the restored ``LambdaLR`` would otherwise keep the old step length and peak). Returns the
    epoch the schedule stands at when something changed, else None."""
    factors = scheduler.lr_lambdas
    if not all(isinstance(f, WarmupCosineLambda) for f in factors):
        return None
    old = factors[0]
    peaks = [peak_lr * group.get("lr_scale", 1.0) for group in scheduler.optimizer.param_groups]
    same_length = math.isclose(old.steps_per_epoch, steps_per_epoch)
    if same_length and all(math.isclose(b, p) for b, p in zip(scheduler.base_lrs, peaks)):
        return None
    epoch = scheduler.last_epoch / old.steps_per_epoch
    fresh = WarmupCosineLambda(
        steps_per_epoch=float(steps_per_epoch),
        warmup_epochs=old.warmup_epochs,
        epochs=old.epochs,
        min_lr_ratio=(min_lr / peak_lr) if peak_lr > 0 else 0.0,
    )
    scheduler.lr_lambdas = [fresh for _ in factors]
    scheduler.base_lrs = peaks
    for group, peak in zip(scheduler.optimizer.param_groups, peaks):
        group["initial_lr"] = peak
    # one step from the step before: LambdaLR then sets every group's lr and its own record of the last lr
    scheduler.last_epoch = round(epoch * steps_per_epoch) - 1
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
    return epoch
