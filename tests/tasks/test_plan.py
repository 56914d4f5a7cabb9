"""RunPlan: the plan a run prints after its first steps, checked against what the trainer actually does."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import pytest
import torch

from croco.tasks.callbacks import RunPlanReport, format_duration
from croco.tasks.training import train

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_plan_matches_the_trainers_counts(compose_train, tiny_shards, tiny_overrides, tmp_path, caplog):
    cfg = compose_train(
        *tiny_overrides(tiny_shards, tmp_path),
        "run_name=plan", "trainer.max_epochs=2", "callbacks.plan.measure_steps=2", "callbacks.panels=null",
        "callbacks.export=null",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="croco.tasks.callbacks"):
        train(cfg)
    # what the trainer did: 16 pairs per epoch in batches of 4, 2 epochs
    last = torch.load(Path(cfg.paths.ckpt_dir) / "last.ckpt", map_location="cpu", weights_only=True)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("plan/total_steps")]
    assert len(rows) == 1  # published once
    plan = {k: float(v) for k, v in rows[0].items() if k.startswith("plan/") and v}
    assert plan["plan/total_steps"] == last["global_step"] == 8
    assert plan["plan/pairs_per_epoch"] == 16
    assert int(rows[0]["step"]) == 3  # after 1 warm-up step and 2 measured ones
    assert plan["plan/s_per_step"] > 0 and math.isclose(plan["plan/pairs_per_s"], 4 / plan["plan/s_per_step"])
    assert math.isclose(plan["plan/projected_h"] * 3600, (8 - 3) * plan["plan/s_per_step"], rel_tol=1e-6)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan: ")]
    assert "16 pairs per epoch (4 optimizer steps of 4 pairs), 8 optimizer steps in total" in line
    assert "over 2 step(s) up to step 3, cpu" in line
    (first,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("first optimizer step")]
    assert "after the launch (the step itself: " in first


def _report(device: str, total: int | None, seconds: float) -> RunPlanReport:
    return RunPlanReport(pairs_per_epoch=7000, steps_per_epoch=109, pairs_per_step=64, total_steps=total,
                         seconds_per_step=seconds, measured_steps=5, from_step=6, device=device)  # fmt: skip


def test_an_absurd_cpu_plan_points_to_the_cpu_experiments():
    paper_on_cpu = _report("cpu", 43600, 30.0)  # the paper's 400 epochs at 30 s per ViT-B step
    advice = paper_on_cpu.advice()
    assert advice is not None and "15.1 days on a CPU" in advice
    assert "experiment=smoke" in advice and "experiment=crossview_cpu" in advice
    assert _report("cuda", 43600, 30.0).advice() is None  # the GPU it was meant for
    assert _report("cpu", 100, 30.0).advice() is None  # under a day
    assert _report("cpu", None, 30.0).advice() is None and "no end set" in _report("cpu", None, 30.0).line()
    assert [format_duration(s) for s in (45, 750, 11520, 1.3e6)] == ["45 s", "12.5 min", "3.2 h", "15.0 days"]
