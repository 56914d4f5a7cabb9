"""Mask ratio x pair overlap: which pretraining pairs and how much masking make the best features?

The grid is one Hydra multirun, ``python train.py experiment=sweep_mask_overlap`` (mask ratios 0.5, 0.75, 0.9,
0.95 x pairs of overlap >= 0.2, 0.4, 0.6, 512 steps each, all validated on the same held-out pairs of overlap
>= 0.2). Then a linear probe of each frozen encoder (``experiment=linprobe_synthetic``, object class of held-out
views) gives the downstream number. The masked PSNR is measured at each run's own mask ratio, so along the
mask-ratio axis it also says how hard the task was; the linear probe compares the encoders on equal terms; the
localisation probe (``croco.eval.localisation``, best decoder block) says whether the decoder's cross-attention
finds a token's match in view 2 (about 0.94 patches is no better than attending to the token's own position).
"""

from __future__ import annotations

import math
from pathlib import Path

from croco.studies.common import (
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
EXPERIMENT = "sweep_mask_overlap"
RATIOS = (0.5, 0.75, 0.9, 0.95)
OVERLAPS = (0.2, 0.4, 0.6)
PROBE_EPOCHS = 6


def cell_run(ratio: float, overlap: float) -> str:
    """The run name the multirun gives the job of this cell (``croco.utils.resolvers``)."""
    return run_name_from_overrides(EXPERIMENT, [f"masking.ratio={ratio}", f"data.overlap_min={overlap}"])


def probe_run(ratio: float, overlap: float) -> str:
    return f"study/linprobe/mask{ratio}_overlap{overlap}"


def stages() -> list[list[Job]]:
    grid = Job(EXPERIMENT, ("train.py", "-m", f"experiment={EXPERIMENT}", "logger=csv"))
    probes = [train_job(probe_run(r, o), ["experiment=linprobe_synthetic", init_override(checkpoint_of(cell_run(r, o))),
                                          f"trainer.max_epochs={PROBE_EPOCHS}", f"optim.epochs={PROBE_EPOCHS}"])
              for r in RATIOS for o in OVERLAPS]  # fmt: skip
    localisation = [eval_job(cell_run(r, o), "localisation", "data/smoke_sweep") for r in RATIOS for o in OVERLAPS]
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


def grids() -> dict[str, list[list[float]]]:
    """Rows: mask ratios; columns: minimum overlaps."""
    return {
        "masked PSNR (dB) at the run's ratio": [[_value(cell_run(r, o), "val/psnr_masked") for o in OVERLAPS] for r in RATIOS],
        "cross-view gap (%)": [[100 * _value(cell_run(r, o), "val/crossview/gap_other") for o in OVERLAPS] for r in RATIOS],
        "linear probe top-1 (%)": [[100 * _value(probe_run(r, o), "val/top1") for o in OVERLAPS] for r in RATIOS],
        "localisation error (patches)": [[_localisation(cell_run(r, o)) for o in OVERLAPS] for r in RATIOS],
    }  # fmt: skip


def report(doc: Path, figures: Path) -> str:
    maps = grids()

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
