"""What the studies share: the pretraining runs, the downstream fine-tunes, reading results, writing the docs.

Every study runs at the smoke scale (``experiment=smoke``: the tiny RoPE model at 64 px, 1,500 embedded pairs,
1,152 steps, about 6 minutes on two cores); downstream tasks are the CPU-sized synthetic experiments, shortened
to ``FINETUNE_EPOCHS`` epochs and validated twice per epoch, so that curves can be compared at equal steps.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from croco.studies.runner import Job, checkpoint_of, run_dir, train_job
from croco.utils.runs import Series, find_metrics, read_series, save_figure

__all__ = [
    "FINETUNE_EPOCHS",
    "PRETRAININGS",
    "TASKS",
    "DownstreamTask",
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
    "read_eval",
    "series_of",
    "write_section",
]

FINETUNE_EPOCHS = 3
SMOKE_DECODER = ("model.dec_embed_dim=96", "model.dec_depth=2", "model.dec_num_heads=3")  # the tiny preset's

# Pretrainings of the studies, by name -> (run name, overrides). "croco" is experiment=smoke itself.
PRETRAININGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "croco": ("study/pretrain/croco", ("experiment=smoke",)),
    "mae": ("study/pretrain/mae", ("experiment=smoke", "model.decoder=mae")),
    "cross3": ("study/pretrain/cross3", ("experiment=smoke", "model.dec_depth=3")),
    "cat2": ("study/pretrain/cat2", ("experiment=smoke", "model.decoder=cat", "model.dec_depth=2")),
}


@dataclass(frozen=True)
class DownstreamTask:
    experiment: str
    metric: str  # the validation metric the studies compare
    label: str
    higher_is_better: bool
    overrides: tuple[str, ...] = ()


TASKS: dict[str, DownstreamTask] = {
    "depth": DownstreamTask("depth_synthetic", "val/abs_rel", "depth AbsRel", False),
    "seg": DownstreamTask("seg_synthetic", "val/miou", "segmentation mIoU", True),
    # the stereo experiment's decoder is the crossview_cpu one; the studies' pretrainings have the tiny preset's
    "stereo": DownstreamTask("stereo_synthetic", "val/avgerr", "stereo EPE (px)", False, SMOKE_DECODER),
}


def pretrain_job(name: str) -> Job:
    run_name, overrides = PRETRAININGS[name]
    return train_job(run_name, overrides)


def finetune_run(task: str, init: str, seed: int) -> str:
    return f"study/{task}/{init}/seed{seed}"


def init_override(checkpoint: Path) -> str:
    """``finetune.init=<checkpoint>``, quoted: run names of a multirun hold '=' (Hydra's override grammar)."""
    return f"finetune.init='{checkpoint}'"


def finetune_job(task: str, init: str, seed: int) -> Job:
    """Fine-tune ``task`` from the pretraining ``init`` (or ``scratch``) with ``seed``. A single-view (mae)
    backbone initialises the encoder only: its decoder never saw image 2."""
    spec = TASKS[task]
    overrides = [f"experiment={spec.experiment}", *spec.overrides, f"seed={seed}",
                 f"trainer.max_epochs={FINETUNE_EPOCHS}", f"optim.epochs={FINETUNE_EPOCHS}",
                 "trainer.val_check_interval=0.5"]  # fmt: skip
    if init != "scratch":
        overrides.append(init_override(checkpoint_of(PRETRAININGS[init][0])))
        if "model.decoder=mae" in PRETRAININGS[init][1]:
            overrides.append("finetune.init_decoder=false")
    return train_job(finetune_run(task, init, seed), overrides)


def eval_path(run_name: str, kind: str) -> Path:
    return run_dir(run_name) / "eval" / f"{kind}.json"


def eval_job(run_name: str, kind: str, data: str, *args: str) -> Job:
    """``python -m croco.eval.<kind>`` on a run's last checkpoint, its numbers to ``<run>/eval/<kind>.json``."""
    return Job(f"{run_name}/{kind}", ("-m", f"croco.eval.{kind}", "--ckpt", str(checkpoint_of(run_name)),
               "--data", data, *args, "--out", str(eval_path(run_name, kind))))  # fmt: skip


def crossview_eval_job(name: str, data: str = "data/smoke") -> Job:
    return eval_job(PRETRAININGS[name][0], "crossview", data, "--pairs", "400", "--no-progress")


def localisation_eval_job(name: str, data: str = "data/smoke") -> Job:
    return eval_job(PRETRAININGS[name][0], "localisation", data)


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
