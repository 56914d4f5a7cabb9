"""Pretrained versus scratch on synthetic depth, segmentation and stereo, at equal fine-tuning steps.

The pretrained backbone is the CroCo pretraining of the cross-view study; each task is fine-tuned from it
and from a random initialisation with three seeds (the seed sets the head's initialisation, the data order and
the augmentations), and validated twice per epoch on held-out scenes. Curves are mean +- standard deviation over
the seeds.
"""

from __future__ import annotations

from pathlib import Path

from croco.studies.common import (
    Scale,
    figure,
    finetune_job,
    finetune_run,
    fmt,
    mean_std,
    pretrain_job,
    relative,
    series_of,
    table,
)
from croco.studies.runner import Job

TITLE = "Pretrained versus scratch"
DOWNSTREAM = ("depth", "seg", "stereo")
INITS = ("croco", "scratch")
SEEDS = (0, 1, 2)


def stages(scale: Scale) -> list[list[Job]]:
    # seed 0 first: with seed 0 alone the report can already be drawn
    return [[pretrain_job("croco", scale)],
            [finetune_job(task, init, seed, scale) for seed in SEEDS for task in DOWNSTREAM for init in INITS]]  # fmt: skip


def seed_points(task: str, init: str, scale: Scale) -> list[list[tuple[int, float]]]:
    """The (step, value) points of the task's validation metric, one list per seed that has them."""
    runs = []
    for seed in SEEDS:
        try:
            points = series_of(finetune_run(task, init, seed, scale)).get(scale.tasks[task].metric, [])
        except FileNotFoundError:
            continue
        if points:
            runs.append(points)
    return runs


def curves(runs: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and standard deviation over the seeds' points (at the steps every seed has)."""
    if not runs:
        return [], [], []
    values = [dict(points) for points in runs]
    steps = sorted(set.intersection(*(set(v) for v in values)))
    stats = [mean_std([v[s] for v in values]) for s in steps]
    return steps, [m for m, _ in stats], [s for _, s in stats]


def report(doc: Path, figures: Path, scale: Scale) -> str:
    tasks = scale.tasks
    runs = {(task, init): seed_points(task, init, scale) for task in DOWNSTREAM for init in INITS}

    def draw(plt, fig):
        axes = fig.subplots(1, len(DOWNSTREAM))
        for ax, task in zip(axes, DOWNSTREAM, strict=True):
            for init, colour in zip(INITS, ("tab:blue", "tab:grey"), strict=True):
                steps, mean, std = curves(runs[(task, init)])
                if not steps:
                    continue
                ax.plot(steps, mean, "o-", ms=3, color=colour, label=f"{init} ({len(runs[(task, init)])} seeds)")
                ax.fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                                [m + s for m, s in zip(mean, std, strict=True)], color=colour, alpha=0.2)  # fmt: skip
            better = "higher" if tasks[task].higher_is_better else "lower"
            ax.set(xlabel="fine-tuning step", ylabel=tasks[task].label, title=f"{tasks[task].label} ({better} is better)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend()

    plot = figure(figures / "init.png", draw, size=(13, 3.8))
    rows = []
    for task in DOWNSTREAM:
        row = [tasks[task].label]
        for init in INITS:
            finals = [points[-1][1] for points in runs[(task, init)]]
            mean, std = mean_std(finals)
            row.append(f"{fmt(mean)} +- {fmt(std)} ({len(finals)})")
        rows.append(row)
    header = ["task", *(f"{init}: mean +- std (seeds)" for init in INITS)]
    return (f"![validation metric over fine-tuning steps, mean +- std over seeds]({relative(plot, doc)})\n\n"
            f"After fine-tuning ({scale.epochs_label}):\n\n{table(header, rows)}\n")  # fmt: skip
