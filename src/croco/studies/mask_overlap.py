"""Mask ratio x pair overlap: which pretraining pairs and how much masking make the best features?

The grid is one Hydra multirun, ``python train.py experiment=sweep_mask_overlap`` (mask ratios 0.5, 0.75, 0.9,
0.95 x pairs of overlap >= 0.2, 0.4, 0.6, 512 steps each, all validated on the same held-out pairs of overlap
>= 0.2; ``sweep_mask_overlap_paper`` at the paper's scale). Then a linear probe of each frozen encoder
(``experiment=linprobe_synthetic``, object class of held-out views; ImageNet at the paper's scale) gives the
downstream number. The masked PSNR is measured at each run's own mask ratio, so along the
mask-ratio axis it also says how hard the task was; the linear probe compares the encoders on equal terms; the
localisation probe (``croco.eval.localisation``, best decoder block) says whether the decoder's cross-attention
finds a token's match in view 2 (about 0.94 patches is no better than attending to the token's own position).
"""

from __future__ import annotations

import math
from pathlib import Path

from croco.studies.common import (
    Scale,
    eval_job,
    figure,
    final,
    fmt,
    init_override,
    read_eval,
    relative,
    series_of,
    table,
)
from croco.studies.runner import Job, checkpoint_of, train_job
from croco.utils.resolvers import run_name_from_overrides

TITLE = "Mask ratio x overlap"
RATIOS = (0.5, 0.75, 0.9, 0.95)
OVERLAPS = (0.2, 0.4, 0.6)


def cell_run(ratio: float, overlap: float, scale: Scale) -> str:
    """The run name the multirun gives the job of this cell (``croco.utils.resolvers``; the scale's extra
    pretraining overrides are part of it when they name what a run is)."""
    swept = [f"masking.ratio={ratio}", f"data.overlap_min={overlap}"]
    return run_name_from_overrides(scale.sweep, [*scale.pretrain_overrides, *swept])


def probe_run(ratio: float, overlap: float, scale: Scale) -> str:
    return f"{scale.prefix}/linprobe/mask{ratio}_overlap{overlap}"


def probe_job(ratio: float, overlap: float, scale: Scale) -> Job:
    overrides = [f"experiment={scale.probe}", init_override(checkpoint_of(cell_run(ratio, overlap, scale)))]
    if scale.probe_epochs:
        overrides += [f"trainer.max_epochs={scale.probe_epochs}", f"optim.epochs={scale.probe_epochs}"]
    return train_job(probe_run(ratio, overlap, scale), [*overrides, *scale.finetune_overrides])


def stages(scale: Scale) -> list[list[Job]]:
    grid = Job(scale.sweep, ("train.py", "-m", f"experiment={scale.sweep}", "logger=csv", *scale.pretrain_overrides))
    probes = [probe_job(r, o, scale) for r in RATIOS for o in OVERLAPS]
    localisation = [eval_job(cell_run(r, o, scale), "localisation", scale.sweep_data) for r in RATIOS for o in OVERLAPS]
    return [[grid], probes + localisation]


def _value(run: str, key: str) -> float:
    try:
        return final(series_of(run), key)
    except FileNotFoundError:
        return math.nan


def _localisation(run: str) -> float:
    """The smallest mean-of-heads error over the decoder blocks (patches), NaN without a measurement."""
    result = read_eval(run, "localisation")
    return min(result["error_mean_of_heads"]) if result else math.nan


def grids(scale: Scale) -> dict[str, list[list[float]]]:
    """Rows: mask ratios; columns: minimum overlaps."""
    def grid(value):
        return [[value(r, o) for o in OVERLAPS] for r in RATIOS]

    return {
        "masked PSNR (dB) at the run's ratio": grid(lambda r, o: _value(cell_run(r, o, scale), "val/psnr_masked")),
        "cross-view gap (%)": grid(lambda r, o: 100 * _value(cell_run(r, o, scale), "val/crossview/gap_other")),
        "linear probe top-1 (%)": grid(lambda r, o: 100 * _value(probe_run(r, o, scale), "val/top1")),
        "localisation error (patches)": grid(lambda r, o: _localisation(cell_run(r, o, scale))),
    }


def report(doc: Path, figures: Path, scale: Scale) -> str:
    maps = grids(scale)

    def draw(plt, fig):
        axes = fig.subplots(1, len(maps))
        for ax, (title, values) in zip(axes, maps.items(), strict=True):
            image = ax.imshow(values, cmap="viridis", aspect="auto")
            for i, row in enumerate(values):
                for j, value in enumerate(row):
                    ax.text(j, i, fmt(value, ".1f"), ha="center", va="center", color="white", fontsize=8)
            ax.set_xticks(range(len(OVERLAPS)), [f">= {o}" for o in OVERLAPS])
            ax.set_yticks(range(len(RATIOS)), [str(r) for r in RATIOS])
            ax.set(xlabel="pair overlap", ylabel="mask ratio", title=title)
            fig.colorbar(image, ax=ax, shrink=0.8)

    plot = figure(figures / "mask_overlap.png", draw, size=(18, 3.8))
    sections = []
    for title, values in maps.items():
        rows = [[str(r), *(fmt(v, ".2f") for v in row)] for r, row in zip(RATIOS, values, strict=True)]
        sections.append(f"{title}:\n\n" + table(["mask ratio", *(f"overlap >= {o}" for o in OVERLAPS)], rows))
    return f"![heat maps over mask ratio and pair overlap]({relative(plot, doc)})\n\n" + "\n\n".join(sections) + "\n"
