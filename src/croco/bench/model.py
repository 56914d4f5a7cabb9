"""Training-step throughput of CroCoNet: pairs/s, achieved GFLOP/s and the fraction of the measured matmul peak.

One step = forward, backward and an AdamW update, on random images, with the paper's masking. The FLOP count is
analytic (matrix multiplications only; 3x the forward pass for a training step), so numbers from different
machines compare. The matmul peak is measured on the spot with large square products in the same precision.

    python -m croco.bench.model --preset croco_v1 --batch 8 --img 224 --precision fp32
    python -m croco.bench.model --preset tiny --batch 32 --precision bf16 --compare-manual

Each run appends a row to docs/benchmarks.md (section "Model training step").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import time
from pathlib import Path

import torch

from croco.bench.record import BENCHMARKS_MD, append_row, cpu_name
from croco.models import CroCoNet, MaskedMSE
from croco.models.masking import num_masked
from croco.utils.config import ConfigError, model_preset

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def forward_flops_per_pair(kw: dict, height: int, width: int, mask_ratio: float) -> float:
    """Multiply-accumulate FLOPs (x2) of one pretraining forward pass for one pair."""
    p, D, d = kw["patch_size"], kw["enc_embed_dim"], kw["dec_embed_dim"]
    mlp = kw.get("mlp_ratio", 4)
    n = (height // p) * (width // p)
    n_vis = n - num_masked(n, mask_ratio)

    def encoder_block(t: int) -> float:  # qkv + proj + mlp, then q.k and attn.v
        return 2 * t * (4 + 2 * mlp) * D * D + 4 * t * t * D

    patch_embed = 2 * (2 * n) * (3 * p * p) * D
    encoder = kw["enc_depth"] * (encoder_block(n_vis) + encoder_block(n))
    embed = 2 * (n_vis + n) * D * d
    if kw.get("decoder", "cross") == "cross":
        self_attn = 2 * n * 4 * d * d + 4 * n * n * d
        cross_attn = 2 * n * 2 * d * d + 2 * n * 2 * d * d + 4 * n * n * d  # q, out | k, v on memory | scores
        block = self_attn + cross_attn + 2 * n * 2 * mlp * d * d
    else:  # CatBlock over 2n tokens
        block = 2 * (2 * n) * (4 + 2 * mlp) * d * d + 4 * (2 * n) ** 2 * d
    head = 2 * n * d * p * p * 3
    return patch_embed + encoder + embed + kw["dec_depth"] * block + head


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Measured GFLOP/s of large square matmuls in ``dtype`` (the yardstick for the step's efficiency)."""
    probe = torch.randn(256, 256, device=device).to(dtype)
    _sync(device)
    start = time.perf_counter()
    probe @ probe
    _sync(device)
    probe_rate = 2 * 256**3 / (time.perf_counter() - start) / 1e9
    if probe_rate < 5.0:  # no fast kernels for this dtype (emulated): the large product would take minutes
        return probe_rate
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    _sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 2:
        a @ b
        n += 1
        _sync(device)
    return 2 * size**3 * n / (time.perf_counter() - start) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_steps(
    model: CroCoNet, batch: int, height: int, width: int, precision: str, device: torch.device, steps: int,
    warmup: int, variants: tuple[tuple[str, bool], ...] = (("sdpa", True),),
) -> dict[str, float]:
    """Median seconds per training step for each attention variant (name, fused). The variants alternate step
    by step, so that load from other processes on a shared machine hits them alike."""
    criterion = MaskedMSE()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    img1 = torch.randn(batch, 3, height, width, device=device)
    img2 = torch.randn(batch, 3, height, width, device=device)
    autocast = (
        torch.autocast(device.type, dtype=DTYPES[precision]) if precision != "fp32" else contextlib.nullcontext()
    )
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for i in range(warmup + steps):
        for name, fused in variants:
            set_fused_attn(model, fused)
            _sync(device)
            start = time.perf_counter()
            with autocast:
                loss = criterion(*model(img1, img2))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def set_fused_attn(model: torch.nn.Module, fused: bool) -> None:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="croco_v1")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img", type=int, nargs="+", default=[224], help="H [W]")
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--mask-ratio", type=float, default=0.9)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compare-manual", action="store_true", help="also time the explicit-softmax attention path")
    ap.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    ap.add_argument("--no-record", action="store_true", help="print only, do not append to --out")
    args = ap.parse_args(argv)

    height, width = (args.img * 2)[:2]
    device = torch.device(args.device)
    try:
        kw = model_preset(args.preset)
    except ConfigError as e:
        raise SystemExit(f"--preset: {e}") from None
    model = CroCoNet(**kw, mask_ratio=args.mask_ratio).to(device)
    flops = 3 * forward_flops_per_pair(kw, height, width, args.mask_ratio)
    peak = matmul_peak(device, DTYPES[args.precision])
    print(f"{args.preset} {height}x{width} batch {args.batch} {args.precision} on {device}: "
          f"{flops / 1e9:.1f} GFLOP per pair per step; matmul peak {peak:.1f} GFLOP/s")  # fmt: skip

    if args.precision != "fp32":
        fp32_peak = matmul_peak(device, torch.float32)
        if peak < 0.25 * fp32_peak:  # e.g. bf16 on a CPU without AVX512-BF16/AMX: emulated, hundreds of times slower
            print(f"  no fast {args.precision} matmul kernels here ({peak:.2f} vs {fp32_peak:.0f} GFLOP/s in fp32): "
                  f"a step would take hours; use --precision fp32 on this machine")  # fmt: skip
            return

    variants = (("sdpa", True),) + ((("manual", False),) if args.compare_manual else ())
    results = bench_steps(model, args.batch, height, width, args.precision, device, args.steps, args.warmup, variants)
    for name, sec in results.items():
        pairs = args.batch / sec
        achieved = flops * pairs / 1e9
        print(f"  attention={name:6s} {sec:7.3f} s/step  {pairs:7.2f} pairs/s  {achieved:7.1f} GFLOP/s  "
              f"{achieved / peak:6.1%} of peak")  # fmt: skip
        if not args.no_record:
            append_row(
                args.out, "Model training step (forward + backward + AdamW)",
                ["date", "device", "preset", "size", "batch", "precision", "attention", "s/step", "pairs/s",
                 "GFLOP/s", "% of matmul peak", "matmul peak GFLOP/s"],
                [dt.date.today().isoformat(), _device_name(device), args.preset, f"{height}x{width}",
                 str(args.batch), args.precision, name, f"{sec:.3f}", f"{pairs:.2f}", f"{achieved:.1f}",
                 f"{achieved / peak:.0%}", f"{peak:.0f}"],
            )  # fmt: skip
    if "manual" in results:
        print(f"  sdpa is {results['manual'] / results['sdpa']:.2f}x the speed of the explicit-softmax path")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
