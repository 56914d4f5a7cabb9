"""The cross-view health metric: does a CroCo network actually use its second view?

Cross-view completion (Weinzaepfel et al., NeurIPS 2022; CroCo v2, ICCV 2023) is only worth its cost if the
decoder reconstructs the masked patches of image 1 *from image 2*. A network can instead learn a good
monocular inpainter and ignore view 2; its loss then hardly changes when view 2 is replaced. This module
measures that: the masked loss of every sample, under the SAME mask, with four choices of view 2
("conditions"):

* ``true``: the real view 2 of the pair (the training objective);
* ``other``: the view 2 of another pair *whose scene id differs* (a scene-aware derangement of the batch);
* ``blank``: a constant 0.5-grey image, ImageNet-normalised like the inputs (no information at all);
* ``self``: image 1 itself, unmasked: the reference of a perfect correspondence (optional, CLI only).

The health number is the relative gap ``(loss_other - loss_true) / loss_other`` (and the same with ``blank``):
0 means view 2 is ignored, larger means the network relies on it. It is reported overall and per overlap bin
(``overlap = min(covis12, covis21)`` of the pair; default bins [0, .3), [.3, .5), [.5, .7), [.7, 1]): at low
overlap view 2 holds less of what is masked, so a healthy network shows a gap that grows with overlap.

Another scene's view 2: a derangement of the batch is used when no scene holds more than half of the batch
(every view 2 used exactly once, so "other" sees the same images as "true"); otherwise each sample takes, with
replacement, a view 2 of another scene from the batch or from a pool (the previous batch's view 2s, which the
caller keeps). A sample for which no other scene exists anywhere (a single-scene batch, no usable pool) is
skipped for that condition and counted: its ``other`` loss is left out, and the gap compares it with the
``true`` loss of the same samples only.

Losses are the network's own ``MaskedMSE`` (``croco.models.criterion``: per-patch normalised targets with
``norm_pix_loss``, as the official naver/croco ``pretrain.py``), reduced per sample instead of per batch.
``CrossViewAccumulator`` keeps sums and counts that can be summed across DDP ranks.

    python -m croco.eval.crossview --ckpt logs/runs/pretrain/checkpoints/last.ckpt --data data/synthetic
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from croco.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from croco.models.checkpoints import (
    CheckpointError,
    load_official_checkpoint,
    load_weights_only,
    network_from_lightning,
)
from croco.models.criterion import normalize_patches
from croco.models.croco import CroCoNet
from croco.models.masking import RandomMask
from croco.utils.files import atomic_output

__all__ = [
    "CONDITIONS",
    "GAP_CONDITIONS",
    "OVERLAP_BINS",
    "BatchResult",
    "CrossViewAccumulator",
    "CrossViewSummary",
    "FolderResult",
    "LoadedNetwork",
    "ViewPool",
    "bin_labels",
    "blank_view",
    "condition_views",
    "crossview_losses",
    "evaluate_batch",
    "evaluate_folder",
    "fixed_mask",
    "load_network",
    "main",
    "other_scene_donors",
    "other_scene_views",
    "per_sample_masked_loss",
    "report",
    "scene_derangement",
]

CONDITIONS: tuple[str, ...] = ("true", "other", "blank", "self")
GAP_CONDITIONS: tuple[str, ...] = ("other", "blank")  # conditions with a gap against "true"
OVERLAP_BINS: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 1.0)  # edges; the last bin includes 1.0
GREY = 0.5  # the blank view, in [0, 1] RGB


# --------------------------------------------------------------------------------------------- losses


def fixed_mask(
    batch: int, num_patches: int, ratio: float, seed: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """A reproducible (B, N) mask with exactly ``int(ratio * N)`` masked patches per row (the official count).

    Used for validation, panels and this metric, so numbers and pictures do not change because the mask
    did."""
    return RandomMask(ratio)(batch, num_patches, device, generator=torch.Generator().manual_seed(int(seed)))


def per_sample_masked_loss(
    pred: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, norm_pix_loss: bool = True
) -> torch.Tensor:
    """``MaskedMSE`` reduced per sample: (B,) mean squared error over each sample's masked patches.

    Every row of a CroCo mask masks the same number of patches, so the mean of these equals ``MaskedMSE``."""
    pred, target = pred.float(), target.float()
    if norm_pix_loss:
        target = normalize_patches(target)
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    weights = mask.to(per_patch.dtype)
    return (per_patch * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


# --------------------------------------------------------------------------------------------- views 2


def blank_view(like: torch.Tensor) -> torch.Tensor:
    """A constant 0.5-grey image shaped like ``like`` (B, 3, H, W), ImageNet-normalised like the inputs."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
    return ((GREY - mean) / std).expand(like.shape).contiguous()


def scene_derangement(scenes: Sequence[str], generator: torch.Generator | None = None) -> torch.Tensor | None:
    """A permutation ``perm`` of the batch with ``scenes[perm[i]] != scenes[i]`` for every i, or None when
    none exists (one scene holds more than half of the batch).

    Samples are listed grouped by scene and each takes the view 2 of the sample ``largest group`` places
    further round the list: the shift is at least any group's length and at most what is left, so it always
    leaves the group. ``generator`` shuffles the groups and their members; without it the result is
    deterministic."""
    groups: dict[str, list[int]] = {}
    for i, scene in enumerate(scenes):
        groups.setdefault(scene, []).append(i)
    size = len(scenes)
    largest = max((len(g) for g in groups.values()), default=0)
    if 2 * largest > size:
        return None
    order = list(groups.values())
    if generator is not None:
        order = [order[k] for k in torch.randperm(len(order), generator=generator).tolist()]
        order = [[g[k] for k in torch.randperm(len(g), generator=generator).tolist()] for g in order]
    flat = [i for group in order for i in group]
    perm = torch.empty(size, dtype=torch.long)
    for k, i in enumerate(flat):
        perm[i] = flat[(k + largest) % size]
    return perm


def other_scene_donors(
    scenes: Sequence[str], pool_scenes: Sequence[str] = (), generator: torch.Generator | None = None
) -> torch.Tensor:
    """For every sample, the index of a view 2 from another scene in ``[batch | pool]`` (pool entries come
    after the batch's), or -1 when no other scene exists.

    A derangement of the batch when one exists (``scene_derangement``); otherwise, with replacement, each
    sample cycles through the view 2s of other scenes, the batch's first, then the pool's."""
    perm = scene_derangement(scenes, generator)
    if perm is not None:
        return perm
    candidates = [*scenes, *pool_scenes]
    eligible: dict[str, list[int]] = {}
    taken: dict[str, int] = {}
    donors = torch.full((len(scenes),), -1, dtype=torch.long)
    for i, scene in enumerate(scenes):
        if scene not in eligible:
            eligible[scene] = [j for j, other in enumerate(candidates) if other != scene]
        choices = eligible[scene]
        if choices:  # spread the uses over the candidates rather than reusing the first one
            donors[i] = choices[taken.get(scene, 0) % len(choices)]
            taken[scene] = taken.get(scene, 0) + 1
    return donors


@dataclass(frozen=True)
class ViewPool:
    """View 2s kept from a previous batch, so that a batch of a single scene still finds another scene's
    view."""

    img2: torch.Tensor  # (M, 3, H, W), normalised
    scenes: tuple[str, ...]

    @classmethod
    def of(cls, img2: torch.Tensor, scenes: Sequence[str]) -> ViewPool:
        return cls(img2.detach(), tuple(str(s) for s in scenes))


def _scene_ids(scenes: Sequence[Any] | None, size: int) -> list[str]:
    """Scene ids as strings; without them every sample counts as its own scene (e.g. panel samples)."""
    if scenes is None:
        return [f"#sample{i}" for i in range(size)]
    if len(scenes) != size:
        raise ValueError(f"{len(scenes)} scene ids for a batch of {size}")
    return [str(s) for s in scenes]


def other_scene_views(
    img2: torch.Tensor,
    scenes: Sequence[Any] | None,
    pool: ViewPool | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) view 2s of other scenes, and which samples got one (B,) bool.

    A sample without one keeps its own view 2 as a placeholder (its loss must be ignored: ``valid`` is False).
    A pool of another image size or device is not used."""
    ids = _scene_ids(scenes, img2.shape[0])
    usable = pool is not None and pool.img2.shape[1:] == img2.shape[1:] and pool.img2.device == img2.device
    pool_scenes = pool.scenes if usable else ()
    donors = other_scene_donors(ids, pool_scenes, generator).to(img2.device)
    bank = torch.cat([img2, pool.img2.to(img2.dtype)]) if usable and pool_scenes else img2
    valid = donors >= 0
    views = bank[donors.clamp_min(0)]
    views = torch.where(valid.view(-1, 1, 1, 1), views, img2)
    return views, valid


def condition_views(
    img1: torch.Tensor,
    img2: torch.Tensor,
    scenes: Sequence[Any] | None,
    conditions: Iterable[str],
    *,
    pool: ViewPool | None = None,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The view 2 of every condition and, for ``other``, which samples have one (see the module docstring)."""
    views: dict[str, torch.Tensor] = {}
    valid: dict[str, torch.Tensor] = {}
    for name in conditions:
        if name == "true":
            views[name] = img2
        elif name == "other":
            views[name], valid[name] = other_scene_views(img2, scenes, pool, generator)
        elif name == "blank":
            views[name] = blank_view(img2)
        elif name == "self":
            views[name] = img1
        else:
            raise ValueError(f"unknown condition {name!r}: expected one of {', '.join(CONDITIONS)}")
    return views, valid


@torch.no_grad()
def crossview_losses(
    net: torch.nn.Module,
    img1: torch.Tensor,
    views2: Mapping[str, torch.Tensor],
    mask: torch.Tensor,
    *,
    norm_pix_loss: bool = True,
    known: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample masked losses (B,) of image 1 under ``mask`` with each view 2 of ``views2``.

    ``known`` holds losses already computed (the validation step passes its own ``true`` losses): those
    conditions are not run again. One forward pass per remaining condition, each with the same batch shape."""
    losses = dict(known or {})
    for name, img2 in views2.items():
        if name not in losses:
            pred, used, target = net(img1, img2, mask)
            losses[name] = per_sample_masked_loss(pred, used, target, norm_pix_loss)
    return losses


@dataclass
class BatchResult:
    """One batch under every condition: per-sample losses (B,), and validity where not every sample counts."""

    losses: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor] = field(default_factory=dict)


def evaluate_batch(
    net: torch.nn.Module,
    batch: Mapping[str, Any],
    mask: torch.Tensor,
    *,
    conditions: Sequence[str] = ("true", "other", "blank"),
    norm_pix_loss: bool = True,
    pool: ViewPool | None = None,
    known: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> BatchResult:
    """The per-sample losses of a batch dict (``img1``, ``img2``, ``scene``) under ``conditions``, all with
    ``mask``; ``pool``: view 2s of an earlier batch for single-scene batches (the caller keeps it)."""
    if "true" not in conditions:
        raise ValueError(f"conditions {tuple(conditions)} must include 'true' (the gaps are relative to it)")
    img1, img2 = batch["img1"], batch["img2"]
    views, valid = condition_views(img1, img2, batch.get("scene"), conditions, pool=pool, generator=generator)
    losses = crossview_losses(net, img1, views, mask, norm_pix_loss=norm_pix_loss, known=known)
    return BatchResult({name: losses[name] for name in conditions}, valid)


# --------------------------------------------------------------------------------------------- accumulator


def bin_labels(edges: Sequence[float]) -> tuple[str, ...]:
    """``(0, .3, .5)`` -> ``("0.0-0.3", "0.3-0.5")``: the names of the overlap bins in logs and tables."""
    return tuple(f"{lo:.1f}-{hi:.1f}" for lo, hi in itertools.pairwise(edges))


@dataclass(frozen=True)
class CrossViewSummary:
    """Means and gaps of an accumulator: ``loss[condition][key]``, ``gap[condition][key]`` (for ``other`` and
    ``blank``) and ``count[condition][key]``, where key is ``"all"`` or a bin label. NaN where a bin is
    empty."""

    conditions: tuple[str, ...]
    bins: tuple[str, ...]
    loss: dict[str, dict[str, float]]
    gap: dict[str, dict[str, float]]
    count: dict[str, dict[str, int]]

    @property
    def keys(self) -> tuple[str, ...]:
        return ("all", *self.bins)

    def metrics(
        self, prefix: str = "val/crossview/", per_bin: Sequence[str] = ("other",)
    ) -> dict[str, float]:
        """Flat, finite values for loggers: ``loss_<c>``, ``gap_<c>`` overall and ``gap_<c>_<bin>`` for the
        conditions of ``per_bin``. Empty bins are left out rather than logged as NaN."""
        out = {f"{prefix}loss_{c}": self.loss[c]["all"] for c in self.conditions}
        out.update({f"{prefix}gap_{c}": self.gap[c]["all"] for c in self.gap})
        for c in per_bin:
            if c in self.gap:
                out.update({f"{prefix}gap_{c}_{b}": self.gap[c][b] for b in self.bins})
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; empty bins are None."""

        def finite(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
            return {
                c: {k: v if math.isfinite(v) else None for k, v in row.items()} for c, row in table.items()
            }

        return {"conditions": list(self.conditions), "bins": list(self.bins), "loss": finite(self.loss),
                "gap": finite(self.gap), "count": self.count}  # fmt: skip

    def markdown(self) -> str:
        """Rows: pairs per bin, loss per condition, gap (in %) per gap condition; columns: all, then each
        bin."""
        head = "| | " + " | ".join(self.keys) + " |"
        lines = [head, "|---" * (len(self.keys) + 1) + "|"]
        lines.append("| pairs | " + " | ".join(str(self.count["true"][k]) for k in self.keys) + " |")
        for c in self.conditions:
            cells = [_fmt(self.loss[c][k], "{:.4f}") for k in self.keys]
            lines.append(f"| loss {c} | " + " | ".join(cells) + " |")
        for c in self.gap:
            cells = [_fmt(100.0 * self.gap[c][k], "{:+.2f}%") for k in self.keys]
            lines.append(f"| gap {c} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _fmt(value: float, spec: str) -> str:
    return spec.format(value) if math.isfinite(value) else "-"


class CrossViewAccumulator:
    """Sums and counts of per-sample losses, per condition and overlap bin, summable across DDP ranks.

    ``state`` (3, conditions, bins): summed losses, sample counts, and the summed ``true`` losses of the
    samples that have the condition (so a gap compares the same samples even when some lack another scene's
    view 2)."""

    def __init__(
        self,
        conditions: Sequence[str] = ("true", "other", "blank"),
        bins: Sequence[float] = OVERLAP_BINS,
        device: torch.device | str | None = None,
    ):
        self.conditions = tuple(conditions)
        if "true" not in self.conditions or len(set(self.conditions)) != len(self.conditions):
            raise ValueError(f"conditions {self.conditions}: must include 'true', once each")
        unknown = set(self.conditions) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"unknown condition(s) {sorted(unknown)}: expected {', '.join(CONDITIONS)}")
        self.edges = tuple(float(e) for e in bins)
        if len(self.edges) < 2 or any(b <= a for a, b in itertools.pairwise(self.edges)):
            raise ValueError(f"bins {bins}: expected at least two increasing edges")
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.state = torch.zeros(3, len(self.conditions), len(self.edges) - 1, dtype=dtype, device=device)

    def bin_index(self, overlap: torch.Tensor) -> torch.Tensor:
        """Bin of every overlap: [lo, hi) except the last, which includes its upper edge; values outside the
        edges go to the first or last bin."""
        if not overlap.is_floating_point():
            overlap = overlap.float()
        # edges in the overlaps' own precision: a float32 overlap of 0.7 is float32(0.7), below float64(0.7)
        inner = torch.tensor(self.edges[1:-1], dtype=overlap.dtype, device=overlap.device)
        return torch.bucketize(overlap, inner, right=True)

    def update(
        self,
        losses: Mapping[str, torch.Tensor],
        overlap: torch.Tensor | Sequence[float],
        valid: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """Add a batch: ``losses[c]`` (B,) for every condition, the pairs' overlaps (B,), and for conditions
        that not every sample has, ``valid[c]`` (B,) bool."""
        state = self.state
        overlap = torch.as_tensor(overlap, device=state.device)
        onehot = torch.nn.functional.one_hot(self.bin_index(overlap), len(self.edges) - 1).to(state.dtype)
        true = losses["true"].detach().to(device=state.device, dtype=state.dtype)
        for i, c in enumerate(self.conditions):
            loss = losses[c].detach().to(device=state.device, dtype=state.dtype)
            ok = torch.ones_like(loss, dtype=torch.bool)
            if valid is not None and c in valid:
                ok = valid[c].to(state.device)
            weight = ok.to(state.dtype)
            # where, not a product: a skipped sample's placeholder loss may be anything, NaN included
            state[0, i] += torch.where(ok, loss, 0.0) @ onehot
            state[1, i] += weight @ onehot
            state[2, i] += torch.where(ok, true, 0.0) @ onehot

    def reduce_(
        self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> CrossViewAccumulator:
        """Sum the state over processes: ``reduce_sum`` (e.g. a Lightning strategy's ``reduce(t, "sum")``), or
        ``torch.distributed.all_reduce`` when a process group is up; a no-op on one process."""
        if reduce_sum is not None:
            self.state = reduce_sum(self.state)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.state)
        return self

    def summary(self) -> CrossViewSummary:
        labels = bin_labels(self.edges)
        sums, counts, true_sums = self.state.double().cpu()
        sums = torch.cat([sums.sum(1, keepdim=True), sums], dim=1)  # column 0: all bins
        counts = torch.cat([counts.sum(1, keepdim=True), counts], dim=1)
        true_sums = torch.cat([true_sums.sum(1, keepdim=True), true_sums], dim=1)
        keys = ("all", *labels)
        nan = float("nan")
        loss, gap, count = {}, {}, {}
        for i, c in enumerate(self.conditions):
            n = counts[i].tolist()
            mean = [s / k if k else nan for s, k in zip(sums[i].tolist(), n, strict=True)]
            loss[c] = dict(zip(keys, mean, strict=True))
            count[c] = {key: int(k) for key, k in zip(keys, n, strict=True)}
            if c in GAP_CONDITIONS:
                base = [s / k if k else nan for s, k in zip(true_sums[i].tolist(), n, strict=True)]
                gap[c] = {key: (m - t) / m if m and math.isfinite(m) else nan
                          for key, m, t in zip(keys, mean, base, strict=True)}  # fmt: skip
        return CrossViewSummary(self.conditions, labels, loss, gap, count)


# --------------------------------------------------------------------------------------------- checkpoints


@dataclass
class LoadedNetwork:
    """A network to evaluate and what its training said about it."""

    net: CroCoNet
    norm_pix_loss: bool
    kind: str  # "lightning" or "official"
    val_fraction: float | None = None  # the run's data.val_fraction, when the checkpoint carries its config


def load_network(path: str | os.PathLike) -> LoadedNetwork:
    """A ``PretrainTask`` Lightning checkpoint (network from its ``model`` / ``mask_ratio`` hyper-parameters,
    ``norm_pix_loss`` and the run config's ``data.val_fraction``) or an official ``.pth`` (the layouts of
    ``croco.models.checkpoints``; ``norm_pix_loss`` from the official ``args`` when present, else on, the
    official default). Loaded with ``weights_only``; every failure is a one-line ``CheckpointError``."""
    ckpt = load_weights_only(path)
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        net = network_from_lightning(ckpt, path)
        hparams = ckpt["hyper_parameters"]
        data = (ckpt.get("cfg") or {}).get("data") if isinstance(ckpt.get("cfg"), dict) else None
        fraction = data.get("val_fraction") if isinstance(data, dict) else None
        return LoadedNetwork(net, bool(hparams.get("norm_pix_loss", True)), "lightning",
                             None if fraction is None else float(fraction))  # fmt: skip
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        norm_pix = bool(int(getattr(ckpt.get("args"), "norm_pix_loss", 1)))  # official pretrain.py's flag
        del ckpt  # the official reader parses the layouts itself (a second read, from the page cache)
        return LoadedNetwork(load_official_checkpoint(path), norm_pix, "official")
    raise CheckpointError(
        f"{path}: neither a Lightning checkpoint ('state_dict') nor an official one ('model')"
    )


# --------------------------------------------------------------------------------------------- evaluation


@dataclass
class FolderResult:
    summary: CrossViewSummary
    pairs: int
    scenes: int
    val_pairs: int  # in the held-out split
    val_fraction: float


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def evaluate_folder(
    loaded: LoadedNetwork,
    folder: str | os.PathLike,
    *,
    pairs: int = 400,
    batch_size: int = 32,
    mask_seed: int = 0,
    seed: int = 0,
    val_fraction: float | None = None,
    conditions: Sequence[str] = CONDITIONS,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> FolderResult:
    """The health metric on at least ``pairs`` pairs (all, if the split has fewer) of the held-out split of a
    shard folder: ``croco.data.datamodule.PairDataModule``'s validation split by scene, centre crops to the
    network's image size, no colour jitter. The pairs are a seeded random subset, so they span many scenes;
    batch ``i`` uses ``fixed_mask(..., seed=mask_seed + i)`` (with ``mask_seed`` 0 the masks of
    validation)."""
    from torch.utils.data import DataLoader

    from croco.data.datamodule import PairDataModule
    from croco.data.dataset import collate_pairs
    from croco.data.transforms import finish_batch

    if pairs < 1 or batch_size < 1:
        raise ValueError(f"pairs={pairs}, batch={batch_size}: expected integers >= 1")
    net = loaded.net.to(device).eval()
    fraction = val_fraction if val_fraction is not None else loaded.val_fraction
    fraction = 0.01 if fraction is None else float(fraction)  # the data configs' default
    datamodule = PairDataModule(
        sources=[str(folder)],
        img_size=tuple(net.patch_embed.img_size),
        transforms="crop",  # the evaluation transform: centre crops, no colour jitter
        val_fraction=fraction,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=False,
        persistent_workers=False,
        seed=seed,
    )
    datamodule.setup("validate")
    dataset = datamodule.data_val
    assert dataset is not None
    if len(dataset) == 0:
        raise ValueError(
            f"{folder}: the held-out split (val_fraction={fraction}) holds no pair; pass --val-fraction"
        )
    count = min(len(dataset), math.ceil(pairs / batch_size) * batch_size)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=num_workers,
                        collate_fn=collate_pairs)  # fmt: skip
    accumulator = CrossViewAccumulator(conditions, device=device)
    grid = net.patch_embed.grid(*net.patch_embed.img_size)
    ratio = net.mask_generator.mask_ratio
    scenes: set[str] = set()
    pool: ViewPool | None = None
    batches: Iterable[Any] = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, total=len(loader), desc="cross-view", unit="batch", file=sys.stderr)
    for index, raw in enumerate(batches):
        batch = finish_batch(_to_device(raw, torch.device(device)))
        size = batch["img1"].shape[0]
        mask = fixed_mask(size, grid[0] * grid[1], ratio, seed=mask_seed + index, device=device)
        result = evaluate_batch(net, batch, mask, conditions=conditions, norm_pix_loss=loaded.norm_pix_loss,
                                pool=pool)  # fmt: skip
        accumulator.update(result.losses, batch["overlap"], result.valid)
        scenes.update(str(s) for s in batch["scene"])
        pool = ViewPool.of(batch["img2"], batch["scene"])
    return FolderResult(accumulator.summary(), count, len(scenes), len(dataset), fraction)


def report(
    result: FolderResult, ckpt: str | os.PathLike, folder: str | os.PathLike, loaded: LoadedNetwork
) -> str:
    """The markdown the CLI prints: what was evaluated, then the table."""
    summary = result.summary
    skipped = summary.count["true"]["all"] - summary.count["other"]["all"] if "other" in summary.count else 0
    lines = [
        f"Cross-view health of {ckpt} ({loaded.kind} checkpoint, norm_pix_loss={loaded.norm_pix_loss})",
        (
            f"on {result.pairs} of the {result.val_pairs} held-out pairs of {folder} "
            f"(val_fraction={result.val_fraction}, {result.scenes} scenes), "
            f"mask ratio {loaded.net.mask_generator.mask_ratio}."
        ),
        "gap = (loss_c - loss_true) / loss_c; 0 means view 2 is ignored.",
    ]
    if skipped:
        lines.append(f"{skipped} pairs had no view 2 of another scene and are left out of 'other'.")
    return "\n".join(lines) + "\n\n" + summary.markdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m croco.eval.crossview", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--ckpt", required=True, help="Lightning checkpoint of a PretrainTask, or an official .pth"
    )
    parser.add_argument(
        "--data", required=True, help="shard folder; its held-out (validation) scenes are used"
    )
    parser.add_argument(
        "--pairs", type=int, default=400, help="evaluate at least this many pairs (default 400)"
    )
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--mask-seed", type=int, default=0, help="batch i is masked with seed mask_seed + i")
    parser.add_argument("--seed", type=int, default=0, help="which random subset of the held-out pairs")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="held-out fraction of scenes (default: the run's, from the checkpoint; else 0.01)",
    )
    parser.add_argument(
        "--conditions",
        default=",".join(CONDITIONS),
        help=f"comma-separated, from {','.join(CONDITIONS)} (default: all)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")  # fmt: skip
    args = parser.parse_args(argv)
    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    try:
        from croco.data.shards import list_shards

        list_shards(args.data)  # a wrong folder fails before a large checkpoint is read
        loaded = load_network(args.ckpt)
        result = evaluate_folder(loaded, args.data, pairs=args.pairs, batch_size=args.batch,
                                 mask_seed=args.mask_seed, seed=args.seed, val_fraction=args.val_fraction,
                                 conditions=conditions, device=args.device, num_workers=args.workers,
                                 progress=not args.no_progress)  # fmt: skip
    except (
        ValueError,
        OSError,
    ) as e:  # CheckpointError and ShardError are ValueErrors with one-line messages
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {first}", file=sys.stderr)
        return 1
    print(report(result, args.ckpt, args.data, loaded))
    if args.out is not None:
        payload = {"checkpoint": str(args.ckpt), "kind": loaded.kind, "data": str(args.data),
                   "pairs": result.pairs, "scenes": result.scenes, "val_pairs": result.val_pairs,
                   "val_fraction": result.val_fraction, "mask_seed": args.mask_seed, "seed": args.seed,
                   "mask_ratio": loaded.net.mask_generator.mask_ratio, "norm_pix_loss": loaded.norm_pix_loss,
                   **result.summary.to_dict()}  # fmt: skip
        with atomic_output(args.out) as tmp:
            Path(tmp).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
