"""CrossBlock versus CatBlock decoders at equal compute.

The released CroCo decoder (``decoder=cross``) self-attends over image 1 and cross-attends to image 2; the
paper's CatBlock ablation (``decoder=cat``) concatenates the two token sets and self-attends over both, which
also runs every MLP on image 2's tokens: per block it costs about 1.5 times as much. So three CrossBlocks are
compared with two CatBlocks at the CPU scale, six with four at the paper's (the FLOP counts of
``croco.bench.model.forward_flops_per_pair`` are printed beside the results), everything else as the scale's
CroCo pretraining.
"""

from __future__ import annotations

from pathlib import Path

from croco.studies.common import (
    Scale,
    crossview_eval_job,
    figure,
    final,
    fmt,
    pretrain_job,
    pretraining,
    read_eval,
    relative,
    series_of,
    table,
)
from croco.studies.runner import Job

TITLE = "CrossBlock versus CatBlock decoders at equal compute"
PRETRAINED = ("cross", "cat")


def stages(scale: Scale) -> list[list[Job]]:
    return [[pretrain_job(name, scale) for name in PRETRAINED],
            [crossview_eval_job(name, scale) for name in PRETRAINED]]  # fmt: skip


def flops_and_params(overrides: tuple[str, ...]) -> tuple[float, int]:
    """Forward GFLOP per pair of the pretraining pass, and the number of parameters, of a study's network."""
    from hydra import compose, initialize_config_dir

    from croco.bench.model import forward_flops_per_pair
    from croco.models.croco import CroCoNet

    config_dir = Path(__file__).resolve().parents[3] / "conf"
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    from omegaconf import OmegaConf

    kw = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
          if k not in ("attn_backend", "channels_last")}  # fmt: skip
    size = kw["img_size"]
    height, width = (size, size) if isinstance(size, int) else size
    net = CroCoNet(**kw)
    return forward_flops_per_pair(kw, height, width, cfg.masking.ratio) / 1e9, sum(p.numel() for p in net.parameters())


def report(doc: Path, figures: Path, scale: Scale) -> str:
    from croco.utils.resolvers import register_resolvers

    register_resolvers()
    runs = {name: pretraining(name, scale)[0] for name in PRETRAINED}
    labels = {name: Path(run).name for name, run in runs.items()}  # cross3, cat2, ...
    series = {name: series_of(run) for name, run in runs.items()}
    health = {name: read_eval(run, "crossview") for name, run in runs.items()}

    def draw(plt, fig):
        ax1, ax2 = fig.subplots(1, 2)
        for name, style in zip(PRETRAINED, ("o-", "s--"), strict=True):
            for ax, key in ((ax1, "val/psnr_masked"), (ax2, "val/crossview/gap_other")):
                points = series[name].get(key, [])
                if points:
                    steps, values = zip(*points, strict=True)
                    factor = 100 if "gap" in key else 1
                    ax.plot(steps, [factor * v for v in values], style, ms=3, label=labels[name])
        ax1.set(xlabel="optimizer step", ylabel="masked PSNR (dB)", title="reconstruction, held-out scenes")
        ax2.set(xlabel="optimizer step", ylabel="gap vs another scene's view 2 (%)", title="use of view 2")
        ax1.legend()
        ax2.legend()

    plot = figure(figures / "decoders.png", draw)
    rows = []
    for name in PRETRAINED:
        gflops, params = flops_and_params(pretraining(name, scale)[1])
        gap = (health[name] or {}).get("gap", {}).get("other", {})
        rows.append([labels[name], fmt(gflops, ".3f"), f"{params / 1e6:.2f} M", fmt(final(series[name], "perf/pairs_per_s"), ".0f"),
                     fmt(final(series[name], "val/psnr_masked"), ".2f"),
                     fmt(100 * gap["all"], ".1f") if gap.get("all") is not None else "n/a"])  # fmt: skip
    header = ["decoder", "forward GFLOP / pair", "parameters", "training pairs/s", "masked PSNR (dB)",
              "gap, all (%)"]  # fmt: skip
    return f"![masked PSNR and cross-view gap over training]({relative(plot, doc)})\n\n{table(header, rows)}\n"
