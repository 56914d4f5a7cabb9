"""What the studies share: the scale they run at, the pretraining runs, the downstream fine-tunes, reading
results, writing the docs.

Two scales (``SCALES``, ``python -m croco.studies <study> --scale cpu|paper``):

* ``cpu`` (docs/results.md): the smoke setting (``experiment=smoke``: the tiny RoPE model at 64 px, 1,500
  embedded pairs, 1,152 steps, about 6 minutes on two cores); downstream tasks are the CPU-sized synthetic
  experiments, shortened to 3 epochs and validated twice per epoch, so that curves can be compared at equal steps.
* ``paper`` (for GPUs): the paper's network and recipe (``experiment=pretrain``: ViT-B/16 encoder, 8-block
  decoder of width 512, 224 px, 400 epochs; the data are the pretraining config's, the embedded generator unless
  overridden, e.g. with Habitat pairs), and the paper-sized downstream experiments with their own recipes:
  NYUv2 depth, ADE20K segmentation, the stereo mix (with the ViT-B network), the ImageNet linear probe.

The study's commands (and so its runs) are the same at both scales; only the runs' names (``study/...`` and
``study_paper/...``) and their settings differ. Extra overrides for every pretraining or every fine-tune
(``--pretrain-override trainer=ddp``, ``--finetune-override data.root=...``) go into the jobs' commands.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from croco.studies.runner import Job, checkpoint_of, module_job, run_dir, train_job
from croco.utils.runs import Series, find_metrics, read_series, save_figure

__all__ = [
    "SCALES",
    "DownstreamTask",
    "Scale",
    "crossview_eval_job",
    "eval_job",
    "eval_path",
    "final",
    "finetune_job",
    "finetune_run",
    "init_override",
    "localisation_eval_job",
    "mean_std",
    "pretrain_job",
    "pretraining",
    "read_eval",
    "series_of",
    "write_section",
]


@dataclass(frozen=True)
class DownstreamTask:
    experiment: str
    metric: str  # the validation metric the studies compare
    label: str
    higher_is_better: bool
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scale:
    """Where the studies run: the networks, data and recipes of their training runs."""

    prefix: str  # of the run names: logs/runs/<prefix>/...
    doc: str  # the page the reports write into
    figures: str  # the folder of their figures
    pretraining: tuple[str, ...]  # the CroCo pretraining; the variants add to it
    tasks: dict[str, DownstreamTask]
    finetune_epochs: int | None  # None: each downstream experiment's own recipe
    data: str  # the pairs whose held-out scenes the cross-view and localisation evaluations read
    sweep: str  # the experiment of the mask ratio x overlap multirun
    sweep_data: str  # its pairs (they must cover the swept overlaps)
    probe: str  # the linear-probe experiment of the swept encoders
    probe_epochs: int | None  # None: the probe experiment's own recipe
    decoders: tuple[int, int]  # CrossBlock and CatBlock depths of equal compute (a CatBlock costs ~1.5x)
    pretrain_overrides: tuple[str, ...] = ()  # added to every pretraining (and the sweep's jobs)
    finetune_overrides: tuple[str, ...] = ()  # added to every fine-tune and probe

    def with_overrides(self, pretrain: Sequence[str] = (), finetune: Sequence[str] = ()) -> Scale:
        return dataclasses.replace(self, pretrain_overrides=self.pretrain_overrides + tuple(pretrain),
                                   finetune_overrides=self.finetune_overrides + tuple(finetune))  # fmt: skip

    @property
    def epochs_label(self) -> str:
        return f"{self.finetune_epochs} epochs" if self.finetune_epochs else "each experiment's recipe"


SMOKE_DECODER = ("model.dec_embed_dim=96", "model.dec_depth=2", "model.dec_num_heads=3")  # the tiny preset's

SCALES: dict[str, Scale] = {
    "cpu": Scale(
        prefix="study",
        doc="docs/results.md",
        figures="docs/figures/results",
        pretraining=("experiment=smoke",),
        tasks={
            "depth": DownstreamTask("depth_synthetic", "val/abs_rel", "depth AbsRel", False),
            "seg": DownstreamTask("seg_synthetic", "val/miou", "segmentation mIoU", True),
            # the stereo experiment's decoder is the crossview_cpu one; the smoke pretraining has the tiny preset's
            "stereo": DownstreamTask("stereo_synthetic", "val/avgerr", "stereo EPE (px)", False, SMOKE_DECODER),
        },
        finetune_epochs=3,
        data="data/smoke",
        sweep="sweep_mask_overlap",
        sweep_data="data/smoke_sweep",
        probe="linprobe_synthetic",
        probe_epochs=6,
        decoders=(3, 2),
    ),
    "paper": Scale(
        prefix="study_paper",
        doc="docs/results_paper.md",
        figures="docs/figures/results_paper",
        pretraining=("experiment=pretrain",),
        tasks={
            "depth": DownstreamTask("depth_nyu", "val/abs_rel", "depth AbsRel (NYUv2)", False),
            "seg": DownstreamTask("seg_ade20k", "val/miou", "segmentation mIoU (ADE20K)", True),
            # the stereo experiment's network is CroCo v2's ViT-L; the studies' pretraining is the v1 ViT-B
            "stereo": DownstreamTask("stereo", "val/avgerr", "stereo EPE (px)", False, ("model=croco_v1",)),
        },
        finetune_epochs=None,
        data="data/synthetic",
        sweep="sweep_mask_overlap_paper",
        sweep_data="data/synthetic",  # overlaps 0.05-0.95: every swept range has pairs
        probe="linprobe_imagenet",
        probe_epochs=None,
        decoders=(6, 4),
    ),
}
"""The CPU scale of docs/results.md and the paper's scale (GPU)."""

PRETRAINED = ("croco", "mae", "cross", "cat")
"""The pretrainings of the studies: CroCo itself, the single-view (MAE-like) network, and the two decoders of the
decoder study."""


def pretraining(name: str, scale: Scale) -> tuple[str, tuple[str, ...]]:
    """(run name, overrides) of the pretraining ``name`` (one of ``PRETRAINED``) at ``scale``."""
    cross, cat = scale.decoders
    variants = {"croco": ("croco", ()), "mae": ("mae", ("model.decoder=mae",)),
                "cross": (f"cross{cross}", (f"model.dec_depth={cross}",)),
                "cat": (f"cat{cat}", ("model.decoder=cat", f"model.dec_depth={cat}"))}  # fmt: skip
    if name not in variants:
        raise ValueError(f"pretraining {name!r}: expected one of {', '.join(variants)}")
    run, extra = variants[name]
    return f"{scale.prefix}/pretrain/{run}", (*scale.pretraining, *extra, *scale.pretrain_overrides)


def pretrain_job(name: str, scale: Scale) -> Job:
    return train_job(*pretraining(name, scale))


def finetune_run(task: str, init: str, seed: int, scale: Scale) -> str:
    return f"{scale.prefix}/{task}/{init}/seed{seed}"


def init_override(checkpoint: Path) -> str:
    """``finetune.init=<checkpoint>``, quoted: run names of a multirun hold '=' (Hydra's override grammar)."""
    return f"finetune.init='{checkpoint}'"


def finetune_job(task: str, init: str, seed: int, scale: Scale) -> Job:
    """Fine-tune ``task`` from the pretraining ``init`` (or ``scratch``) with ``seed``. A single-view (mae)
    backbone initialises the encoder only: its decoder never saw image 2."""
    spec = scale.tasks[task]
    overrides = [f"experiment={spec.experiment}", *spec.overrides, f"seed={seed}"]
    if scale.finetune_epochs:
        overrides += [f"trainer.max_epochs={scale.finetune_epochs}", f"optim.epochs={scale.finetune_epochs}"]
    overrides.append("trainer.val_check_interval=0.5")
    if init != "scratch":
        run, pretrain_overrides = pretraining(init, scale)
        overrides.append(init_override(checkpoint_of(run)))
        if "model.decoder=mae" in pretrain_overrides:
            overrides.append("finetune.init_decoder=false")
    return train_job(finetune_run(task, init, seed, scale), [*overrides, *scale.finetune_overrides])


def eval_path(run_name: str, kind: str) -> Path:
    return run_dir(run_name) / "eval" / f"{kind}.json"


def eval_job(run_name: str, kind: str, data: str, *args: str) -> Job:
    """``python -m croco.eval.<kind>`` on a run's last checkpoint, its numbers to ``<run>/eval/<kind>.json``."""
    return module_job(f"{run_name}/{kind}", f"croco.eval.{kind}", ("--ckpt", str(checkpoint_of(run_name)),
                      "--data", data, *args, "--out", str(eval_path(run_name, kind))))  # fmt: skip


def crossview_eval_job(name: str, scale: Scale) -> Job:
    return eval_job(pretraining(name, scale)[0], "crossview", scale.data, "--pairs", "400", "--no-progress")


def localisation_eval_job(name: str, scale: Scale) -> Job:
    return eval_job(pretraining(name, scale)[0], "localisation", scale.data)


# --------------------------------------------------------------------------------------------- reading


def series_of(run_name: str) -> Series:
    """Every logged metric of a run (its newest launch's metrics.csv) as (step, value) points."""
    return read_series(find_metrics(run_dir(run_name)))


def final(series: Series, key: str) -> float:
    """The last logged value of ``key`` (NaN when it was never logged)."""
    points = series.get(key)
    return points[-1][1] if points else math.nan


def read_eval(run_name: str, kind: str) -> dict[str, Any] | None:
    path = eval_path(run_name, kind)
    return json.loads(path.read_text()) if path.is_file() else None


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def fmt(value: float, spec: str = ".3f") -> str:
    return "n/a" if not math.isfinite(value) else format(value, spec)


# --------------------------------------------------------------------------------------------- writing


def write_section(doc: str | Path, study: str, markdown: str) -> Path:
    """Put ``markdown`` between ``<!-- study:<study> -->`` and ``<!-- /study:<study> -->`` in ``doc`` (appended
    with its markers if absent): the generated part of a study's section; the text around it is written by hand."""
    doc = Path(doc)
    begin, end = f"<!-- study:{study} -->", f"<!-- /study:{study} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = doc.read_text() if doc.is_file() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + f"\n\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_name(doc.name + ".tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    tmp.replace(doc)
    return doc


def figure(path: Path, draw: Any, size: tuple[float, float] = (10, 3.6)) -> Path:
    """Draw with ``draw(plt, fig)`` and save as PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size, dpi=110)
    try:
        draw(plt, fig)
        fig.tight_layout()
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def relative(path: Path, doc: Path) -> str:
    """``path`` as a link from ``doc``'s folder."""
    import os

    return Path(os.path.relpath(path, doc.parent)).as_posix()


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
