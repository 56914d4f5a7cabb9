"""CrossBlock versus CatBlock decoders at equal compute.

The released CroCo decoder (``decoder=cross``) self-attends over image 1 and cross-attends to image 2; the
paper's CatBlock ablation (``decoder=cat``) concatenates the two token sets and self-attends over both, which
also runs every MLP on image 2's tokens: per block it costs about 1.5 times as much. So three CrossBlocks are
compared with two CatBlocks (the FLOP counts of ``croco.bench.model.forward_flops_per_pair`` are printed beside
the results), everything else as ``experiment=smoke``.
"""

from __future__ import annotations

from pathlib import Path

from croco.studies.common import (
    PRETRAININGS,
    crossview_eval_job,
    figure,
    final,
    fmt,
    pretrain_job,
    read_eval,
    relative,
    series_of,
    table,
)
from croco.studies.runner import Job

TITLE = "CrossBlock versus CatBlock decoders at equal compute"
PRETRAINED = ("cross3", "cat2")


def stages() -> list[list[Job]]:
    return [[pretrain_job(name) for name in PRETRAINED], [crossview_eval_job(name) for name in PRETRAINED]]


def flops_and_params(name: str) -> tuple[float, int]:
    """Forward GFLOP per pair of the pretraining pass, and the number of parameters, of a study's network."""
    from hydra import compose, initialize_config_dir

    from croco.bench.model import forward_flops_per_pair
    from croco.models.croco import CroCoNet

    config_dir = Path(__file__).resolve().parents[3] / "conf"
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("train", overrides=list(PRETRAININGS[name][1]))
    from omegaconf import OmegaConf

    kw = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
          if k not in ("attn_backend", "channels_last")}  # fmt: skip
    size = kw["img_size"]
    height, width = (size, size) if isinstance(size, int) else size
    net = CroCoNet(**kw)
    return forward_flops_per_pair(kw, height, width, cfg.masking.ratio) / 1e9, sum(p.numel() for p in net.parameters())


def report(doc: Path, figures: Path) -> str:
    from croco.utils.resolvers import register_resolvers

    register_resolvers()
    runs = {name: PRETRAININGS[name][0] for name in PRETRAINED}
    series = {name: series_of(run) for name, run in runs.items()}
    health = {name: read_eval(run, "crossview") for name, run in runs.items()}

    def draw(plt, fig):
        ax1, ax2 = fig.subplots(1, 2)
        for name, style in zip(PRETRAINED, ("o-", "s--"), strict=True):
            for ax, key in ((ax1, "val/psnr_masked"), (ax2, "val/crossview/gap_other")):
                points = series[name].get(key, [])
                if points:
                    steps, values = zip(*points, strict=True)
                    scale = 100 if "gap" in key else 1
                    ax.plot(steps, [scale * v for v in values], style, ms=3, label=name)
        ax1.set(xlabel="optimizer step", ylabel="masked PSNR (dB)", title="reconstruction, held-out scenes")
        ax2.set(xlabel="optimizer step", ylabel="gap vs another scene's view 2 (%)", title="use of view 2")
        ax1.legend()
        ax2.legend()

    plot = figure(figures / "decoders.png", draw)
    rows = []
    for name in PRETRAINED:
        gflops, params = flops_and_params(name)
        gap = (health[name] or {}).get("gap", {}).get("other", {})
        rows.append([name, fmt(gflops, ".3f"), f"{params / 1e6:.2f} M", fmt(final(series[name], "perf/pairs_per_s"), ".0f"),
                     fmt(final(series[name], "val/psnr_masked"), ".2f"),
                     fmt(100 * gap["all"], ".1f") if gap.get("all") is not None else "n/a"])  # fmt: skip
    header = ["decoder", "forward GFLOP / pair", "parameters", "training pairs/s", "masked PSNR (dB)",
              "gap, all (%)"]  # fmt: skip
    return f"![masked PSNR and cross-view gap over training]({relative(plot, doc)})\n\n{table(header, rows)}\n"
