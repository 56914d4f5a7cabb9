"""Cross-view versus single-view completion: CroCo against the same network with view 2 removed (MAE-like).

Both pretrainings are the scale's CroCo pretraining (same encoder, same decoder depth and width, same steps, masks and
data); the single-view one has ``model.decoder=mae``: its decoder self-attends over image 1 only and image 2 is
never encoded. Compared: the masked PSNR on held-out scenes, the cross-view health gap by overlap (which must be
0 for the single-view network: the check that the comparison is wired right), and depth and stereo after
fine-tuning (the single-view backbone initialises the stereo encoder only; ``scratch`` is the floor).
"""

from __future__ import annotations

from pathlib import Path

from croco.studies.common import (
    Scale,
    crossview_eval_job,
    figure,
    final,
    finetune_job,
    finetune_run,
    fmt,
    localisation_eval_job,
    pretrain_job,
    pretraining,
    read_eval,
    relative,
    series_of,
    table,
)
from croco.studies.runner import Job

TITLE = "Cross-view versus single-view completion"
PRETRAINED = ("croco", "mae")
DOWNSTREAM = ("depth", "stereo")
INITS = ("croco", "mae", "scratch")


def stages(scale: Scale) -> list[list[Job]]:
    return [
        [pretrain_job(name, scale) for name in PRETRAINED],
        [*(crossview_eval_job(name, scale) for name in PRETRAINED), localisation_eval_job("croco", scale)],
        [finetune_job(task, init, 0, scale) for task in DOWNSTREAM for init in INITS],
    ]


def report(doc: Path, figures: Path, scale: Scale) -> str:
    runs = {name: pretraining(name, scale)[0] for name in PRETRAINED}
    tasks = scale.tasks
    series = {name: series_of(run) for name, run in runs.items()}
    health = {name: read_eval(run, "crossview") for name, run in runs.items()}

    bins = [b for b in health["croco"]["bins"] if health["croco"]["count"]["true"].get(b)] if health["croco"] else []

    def draw(plt, fig):
        ax1, ax2 = fig.subplots(1, 2)
        for name, style in (("croco", "o-"), ("mae", "s--")):
            points = series[name].get("val/psnr_masked", [])
            if points:
                ax1.plot(*zip(*points, strict=True), style, ms=3, label=name)
        ax1.set(xlabel="optimizer step", ylabel="masked PSNR (dB), held-out scenes", title="reconstruction")
        ax1.legend()
        width = 0.38
        for offset, name in ((-width / 2, "croco"), (width / 2, "mae")):
            gaps = [100 * (health[name]["gap"]["other"].get(b) or 0.0) if health[name] else 0.0 for b in bins]
            bars = ax2.bar([i + offset for i in range(len(bins))], gaps, width, label=name)
            ax2.bar_label(bars, fmt="%.1f", fontsize=8)
        ax2.set_xticks(range(len(bins)), [f"overlap {b}" for b in bins], fontsize=8)
        ax2.set(ylabel="gap vs another scene's view 2 (%)", title="use of view 2")
        ax2.axhline(0, color="black", lw=0.8)
        ax2.legend()

    plot = figure(figures / "crossview_vs_single.png", draw)
    rows = []
    for name in PRETRAINED:
        h = health[name]
        gap = h["gap"]["other"] if h else {}
        rows.append([name, fmt(final(series[name], "val/psnr_masked"), ".2f"), fmt(final(series[name], "val/loss"), ".4f"),
                     *(fmt(100 * gap[b], ".1f") if gap.get(b) is not None else "n/a" for b in ["all", *bins])])  # fmt: skip
    pre = table(["pretraining", "masked PSNR (dB)", "masked loss", "gap, all (%)", *(f"gap, {b} (%)" for b in bins)],
                rows)  # fmt: skip
    down_rows = []
    for init in INITS:
        row = [init]
        for task in DOWNSTREAM:
            s = series_of(finetune_run(task, init, 0, scale))
            row.append(fmt(final(s, tasks[task].metric)))
        down_rows.append(row)
    down = table(["initialisation", *(f"{tasks[t].label} ({'higher' if tasks[t].higher_is_better else 'lower'} is better)"
                                       for t in DOWNSTREAM)], down_rows)  # fmt: skip
    loc = read_eval(runs["croco"], "localisation")
    loc_line = ""
    if loc:
        errors = " / ".join(f"{e:.2f}" for e in loc["error_mean_of_heads"])
        own = loc["own_position_error"][0]
        loc_line = (f"\nLocalisation probe of the CroCo decoder (`croco.eval.localisation`; error of the attention-"
                    f"weighted position, in patches, per decoder block): {errors}, against {own:.2f} for a token's "
                    "own position.\n")  # fmt: skip
    return (f"![masked PSNR over training and the cross-view gap by overlap]({relative(plot, doc)})\n\n"
            f"Pretraining (held-out scenes of {scale.data}; gap = (loss with another scene's view 2 - loss with the "
            f"true one) / the former):\n\n{pre}\n{loc_line}\nAfter fine-tuning ({scale.epochs_label}, seed 0):\n\n{down}\n")  # fmt: skip

