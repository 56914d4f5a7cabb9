"""The model benchmark's analytic FLOP count and its markdown recording (not a timing test)."""

from __future__ import annotations

import pytest
import torch

from croco.bench.model import bench_steps, forward_flops_per_pair, main
from croco.bench.record import append_row
from croco.models import CroCoNet
from croco.utils.config import model_preset


def test_flops_match_the_published_cost_of_croco_v1():
    # 159.5 GFLOP per pair for one training step of CroCo v1 at 224 (forward + backward = 3x forward)
    assert 3 * forward_flops_per_pair(model_preset("croco_v1"), 224, 224, 0.9) / 1e9 == pytest.approx(159.5, rel=0.01)


def test_flops_count_matmuls_of_a_linear_layer_stack():
    kw = model_preset("tiny")
    # more visible tokens cost more; the cat decoder over 2N tokens costs more than cross-attention
    assert forward_flops_per_pair(kw, 64, 64, 0.5) > forward_flops_per_pair(kw, 64, 64, 0.9)
    assert forward_flops_per_pair({**kw, "decoder": "cat"}, 64, 64, 0.9) > forward_flops_per_pair(kw, 64, 64, 0.9)


def test_append_row_creates_and_extends_sections(tmp_path):
    path = tmp_path / "bench.md"
    path.write_text("# Benchmarks\n\n## Data pipeline\n\n| a |\n|---|\n| 1 |\n")
    append_row(path, "Model", ["x", "y"], ["1", "2"])
    append_row(path, "Model", ["x", "y"], ["3", "4"])
    append_row(path, "Data pipeline", ["a"], ["5"])
    text = path.read_text()
    assert text.count("## Model") == 1 and "| 1 | 2 |\n| 3 | 4 |" in text
    assert "| 1 |\n| 5 |" in text and text.index("| 5 |") < text.index("## Model")


def test_bench_step_runs_a_real_update():
    model = CroCoNet(**model_preset("tiny"))
    before = model.prediction_head.weight.detach().clone()
    seconds = bench_steps(model, 2, 64, 64, "fp32", torch.device("cpu"), steps=1, warmup=0,
                          variants=(("sdpa", True), ("manual", False)))  # fmt: skip
    assert set(seconds) == {"sdpa", "manual"} and min(seconds.values()) > 0
    assert not torch.equal(before, model.prediction_head.weight)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(SystemExit, match="--preset: model=vit_h: unknown model option; allowed: croco_v1"):
        main(["--preset", "vit_h", "--no-record"])
