"""The model benchmark's analytic FLOP count, its matmul-peak bookkeeping and its markdown recording.

Nothing here times anything: the peak meter gets made-up rates, the share gets made-up step speeds."""

from __future__ import annotations

import pytest
import torch

from croco.bench.model import (
    PRINTED,
    VARIANTS,
    MatmulPeak,
    MatmulPeakMeter,
    PeakRun,
    bench_steps,
    format_table,
    forward_flops_per_pair,
    main,
    official_forward,
    report_rows,
    share_of_peak,
)
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
    path.write_text("# B\n\n## Model\n\n| x | y |\n|---|---|\n| 1 | 2 |\n\nA note on the table.\n")
    append_row(path, "Model", ["x", "y"], ["3", "4"])
    assert path.read_text() == "# B\n\n## Model\n\n| x | y |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\nA note on the table.\n"


def test_bench_step_runs_a_real_update_and_interleaves_the_peak_rounds():
    model = CroCoNet(**model_preset("tiny"))
    before = model.prediction_head.weight.detach().clone()
    calls = []
    variants = [VARIANTS["official"], VARIANTS["sdpa"]]
    seconds = bench_steps(model, 2, 64, 64, "fp32", torch.device("cpu"), steps=2, warmup=1, variants=variants,
                          between=lambda: calls.append(1))  # fmt: skip
    assert set(seconds) == {"official", "sdpa"} and min(seconds.values()) > 0
    assert not torch.equal(before, model.prediction_head.weight)
    assert len(calls) == 2  # one peak round after each timed iteration, none after the warm-up


@pytest.mark.parametrize("decoder", ["cross", "cat"])
@pytest.mark.parametrize("preset", ["tiny", "croco_v1"])
def test_official_stand_in_computes_the_projects_pretraining_pass(preset, decoder):
    """The benchmark's ``official`` variant (boolean masking, explicit softmax) is the same function as
    ``CroCoNet.forward``: bit-identical predictions, so the two variants time the same computation."""
    kw = {**model_preset(preset), "decoder": decoder}
    if preset == "croco_v1":  # the v1 layout (cosine positions, 16-pixel patches) at a small width and depth
        kw.update(enc_embed_dim=64, enc_depth=2, enc_num_heads=4, dec_embed_dim=32, dec_depth=1, dec_num_heads=2)
    model = CroCoNet(**kw, mask_ratio=0.75).eval()
    model.attn_backend = "manual"
    size = kw["patch_size"] * 6
    img1, img2 = torch.randn(2, 3, size, size), torch.randn(2, 3, size, size)
    mask = model.mask_generator(2, 36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, official = model(img1, img2, mask)[0], official_forward(model, img1, img2, mask)[0]
    assert torch.equal(ours, official)


def fake_meter(rates: list[float], sizes=(1024, 2048)) -> MatmulPeakMeter:
    """A meter whose runs return ``rates`` in order instead of timing products."""
    it = iter(rates)
    return MatmulPeakMeter(torch.device("cpu"), "fp32", sizes=sizes, rate=lambda size: next(it))


def test_peak_is_the_best_run_over_all_sizes_and_rounds():
    meter = fake_meter([80.0, 95.0, 120.0, 90.0, 60.0, 101.0])
    for _ in range(3):
        meter.round()
    peak = meter.peak
    assert len(peak.runs) == 6 and peak.gflops == 120.0 and peak.best == PeakRun(1024, 120.0)
    assert peak.by_size() == {1024: 120.0, 2048: 101.0}  # each size's best, not its last or its mean
    assert "best of 6 runs" in peak.describe() and "1024: 120, 2048: 101" in peak.describe()
    with pytest.raises(ValueError, match="no matmul run"):
        _ = MatmulPeak("fp32", 2).gflops


def test_peak_rounds_interleaved_with_steps_keep_accumulating():
    meter = fake_meter([50.0, 50.0, 70.0, 40.0], sizes=(1024,))
    assert meter.round().gflops == 50.0
    bench_rounds = [meter.round() for _ in range(3)]  # what bench_steps' `between` does
    assert bench_rounds[-1].gflops == 70.0 and len(meter.peak.runs) == 4


def test_sizes_too_slow_for_the_best_rate_so_far_are_skipped():
    # 1 GFLOP/s (emulated kernels): a 1024 product takes 2.1 s, a 2048 one 17 s, over the 5 s limit
    meter = MatmulPeakMeter(torch.device("cpu"), "bf16", sizes=(2048, 1024), rate=lambda size: 1.0)
    meter.round()
    meter.round()
    assert [run.size for run in meter.peak.runs] == [1024, 1024] and meter.peak.skipped == (2048,)
    assert "skipped 2048 (too slow)" in meter.peak.describe()


def peak_of(*rates: float) -> MatmulPeak:
    return MatmulPeak("fp32", 2, [PeakRun(2048, r) for r in rates])


def test_share_is_never_above_100_percent():
    peak = peak_of(90.0, 102.0, 95.0)
    slower = share_of_peak(51.0, peak)
    assert slower.share == pytest.approx(0.5) and not slower.raised
    assert slower.peak_cell() == "102 GFLOP/s (best of 3)" and slower.share_cell() == "50%"
    faster = share_of_peak(107.1, peak)  # the old benchmarks.md case: a step above a single-run peak
    assert faster.share == 1.0 and faster.raised
    assert faster.peak_gflops == 107.1 and faster.measured_gflops == 102.0
    assert faster.peak_cell() == "107 GFLOP/s (raised to the step's rate; measured best of 3: 102)"
    assert faster.share_cell() == "100% (peak under-measured)"
    for achieved in (1.0, 101.9, 102.0, 102.1, 1e6):
        assert 0.0 < share_of_peak(achieved, peak).share <= 1.0


def test_report_rows_of_a_step_faster_than_the_peak():
    flops = 3 * forward_flops_per_pair(model_preset("croco_v1"), 224, 224, 0.9)
    rows = report_rows({"project": 11.946, "official": 30.0}, 8, flops, peak_of(60.0, 102.0))
    fast, slow = rows
    assert fast["vs official"] == "2.51x" and slow["vs official"] == "1.00x"
    assert fast["GFLOP/s"] == "107.1" and fast["% of peak"].startswith("100%") and fast["_raised"]
    assert "raised" in fast["peak"] and "measured best of 2: 102" in fast["peak"]
    assert slow["% of peak"] == "42%" and not slow["_raised"]
    assert slow["peak"] == "102 GFLOP/s (best of 2)"
    for row in rows:
        assert float(row["% of peak"].split("%")[0]) <= 100
    table = format_table(rows, PRINTED)
    header, *lines = table.splitlines()
    assert header.split()[:5] == ["variant", "s/step", "pairs/s", "vs", "official"] and len(lines) == 2
    assert "(raised to the step's rate; measured best of 2: 102)" in lines[0]


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(SystemExit, match="--preset: model=vit_h: unknown model option; allowed: croco_v1"):
        main(["--preset", "vit_h", "--no-record"])


def test_main_records_a_row_with_its_peak(tmp_path, capsys):
    # a smoke run (tiny model, 128x128 peak products): the numbers are not checked, only what is reported
    out = tmp_path / "bench.md"
    argv = "--preset tiny --batch 2 --img 64 --steps 1 --warmup 0 --peak-sizes 128 --remeasure 0"
    rows = main([*argv.split(), "--variants", "official", "project", "--out", str(out)])
    assert [row["variant"] for row in rows] == ["official", "project"]
    printed = capsys.readouterr().out
    assert "matmul peak:" in printed and "best of 2 runs (fp32" in printed and "% of peak" in printed
    text = out.read_text()
    assert "| peak | % of peak | peak memory | load |" in text and "(process RSS)" in text and text.count("GFLOP/s (best of 2") + text.count(
        "measured best of 2"
    ) == 2
    for row in rows:
        assert float(row["% of peak"].split("%")[0]) <= 100


def test_datasheet_peaks_match_the_longest_name_part():
    from croco.bench.model import datasheet_matmul_peak, datasheet_peak

    assert datasheet_peak("NVIDIA H100 PCIe") == 756e3 and datasheet_peak("NVIDIA H100 80GB HBM3 SXM") == 756e3
    assert datasheet_peak("NVIDIA H200") == 989e3 and datasheet_peak("NVIDIA A100-SXM4-80GB") == 312e3
    assert datasheet_peak("Some Unknown GPU") is None
    share = share_of_peak(500e3, datasheet_matmul_peak(989e3, "bf16"))
    assert share.share == pytest.approx(500 / 989) and not share.raised


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(SystemExit, match="--variants: unknown fastest; allowed: official, project"):
        main(["--preset", "tiny", "--variants", "fastest", "--no-record"])


def test_attention_table_times_every_backend_and_names_the_fastest(tmp_path):
    from croco.bench.model import attention_shapes, attention_table

    shapes = attention_shapes(model_preset("tiny"), 2, 64, 64, 0.75)
    assert shapes == [(2, 4, 16, 32), (2, 4, 64, 32), (2, 3, 64, 32)]
    rows = attention_table(torch.device("cpu"), ["fp32"], shapes[:1], repeats=1)
    total = rows[-1]
    assert total["shape (B, heads, N, Dh)"] == "all (sum)" and total["fastest"] in ("manual", "sdpa", "sdpa_math",
                                                                                       "sdpa_flash")
    assert total["manual"].endswith(" ms") and total["sdpa_efficient"] in ("n/a",) or total["sdpa_efficient"]


def test_bf16_verdict_says_when_bf16_is_not_faster():
    from croco.bench.model import bf16_verdict

    fp32 = MatmulPeak("fp32", 2, [PeakRun(2048, 185.0)])
    slow = bf16_verdict(MatmulPeak("bf16", 2, [PeakRun(2048, 190.0)]), fp32, {"official-fp32": 9.8, "project": 15.8})
    assert "bf16 matmuls are NOT faster than fp32 here (190 vs 185" in slow
    assert "project under bf16 autocast is NOT faster than the official fp32 step (15.80 vs 9.80 s/step)" in slow
    fast = bf16_verdict(MatmulPeak("bf16", 2, [PeakRun(2048, 900.0)]), fp32, {"project": 1.0})
    assert "bf16 matmuls are faster than fp32" in fast and "autocast" not in fast


def test_a_variant_can_run_in_its_own_precision():
    model = CroCoNet(**model_preset("tiny"))
    variants = [VARIANTS["official-fp32"], VARIANTS["project"]]
    seconds = bench_steps(model, 2, 64, 64, "bf16", torch.device("cpu"), steps=1, warmup=0, variants=variants)
    assert set(seconds) == {"official-fp32", "project"}
