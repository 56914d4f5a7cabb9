"""Training-step throughput of CroCoNet: pairs/s, achieved GFLOP/s and the share of a measured matmul peak.

One step = forward, backward and an AdamW update, on random images, with the paper's masking. The FLOP count is
analytic (matrix multiplications only; 3x the forward pass for a training step), so numbers from different
machines compare.

    python -m croco.bench.model --preset croco_v1 --batch 8 --img 224 --precision fp32
    python -m croco.bench.model --preset tiny --batch 32 --precision bf16 --compare-manual

Each run appends a row per attention variant to docs/benchmarks.md (section "Model training step"); the row
names the device (on a CPU: model name, family/model numbers, whether it has AVX512-BF16 and AMX-BF16, thread
count), the matmul peak it was compared with and how many runs that peak is the best of.

How the matmul peak is measured (``MatmulPeakMeter``, the one function used for every precision):

* square products ``a @ b`` of several sizes (``PEAK_SIZES``, 1024 to 4096), operands created in the step's
  dtype and multiplied inside the same autocast context as the step (``precision_context``), in the same
  process, so with the same thread count (and on CUDA the same TF32 setting);
* one untimed product per size first (warm-up: allocation, kernel selection, thread pool start-up), then each
  timed run repeats the product for at least ``min_seconds``;
* one round over all sizes before the first timed step and one after each timed step: the peak runs are
  interleaved with the steps, so both see the same clock speed and the same load from other processes;
* the peak is the **best** run, never the mean: noise (other processes, frequency drops) can only slow a run
  down, so every run is a lower bound on what the hardware does and the fastest one is the closest to it;
* a size whose single product would take over 5 s at the best rate seen so far is skipped (a dtype without
  fast kernels); the printed peak lists the best run per size and any size left out.

Since the measured peak can only under-estimate the hardware's, ``achieved / peak`` is an upper bound on the
step's true efficiency. The published share is never above 100%: if the step's achieved GFLOP/s exceed
the measured peak, the measurement under-estimated the hardware (an unlucky or too-small set of runs; a
GEMM shape of the model that the library runs faster than square ones), since the step itself proves the
hardware reaches that rate. ``main`` then re-measures (``--remeasure`` more rounds); if the step is still
faster, the peak is raised to the step's own rate, the share is reported as 100% and both the printed table
and the docs row say "raised to the step's rate" next to the measured best, so nobody reads it as an
efficiency figure (``share_of_peak``). A share printed as 100% with that note means: efficiency unknown, at
least as good as any square matmul measured here. (The analytic count itself can over-count slightly, by
<1%: the patch embedding's backward needs no input gradient, yet the count charges 3x its forward.)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from croco.bench.record import BENCHMARKS_MD, append_row, cpu_flags, cpu_name
from croco.models import CroCoNet, MaskedMSE
from croco.models.masking import num_masked
from croco.utils.config import ConfigError, model_preset

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PEAK_SIZES = (1024, 2048, 3072, 4096)
SECTION = "Model training step (forward + backward + AdamW)"
SECTION_INTRO = (
    "`python -m croco.bench.model`. `GFLOP/s` = analytic matmul FLOPs of a training step (3x forward) per "
    "second. `matmul peak` = the best of N timed square matmuls (sizes 1024-4096, same dtype, autocast and "
    "thread count as the step), measured in rounds interleaved with the timed steps; `% of peak` never "
    "exceeds 100%: a step faster than every peak run raises the peak to the step's rate, and the row says "
    "so. `load` = 1-min load average at the start and at the end of the run (other processes slow both the "
    "steps and the peak runs)."
)
COLUMNS = [
    "date", "device", "preset", "size", "batch", "precision", "attention", "s/step", "pairs/s", "GFLOP/s",
    "matmul peak", "% of peak", "load",
]  # fmt: skip
PRINTED = ["attention", "s/step", "pairs/s", "GFLOP/s", "matmul peak", "% of peak"]  # the console table


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


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a step in ``precision`` (none for fp32): the step and the peak both use it."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


@dataclass(frozen=True)
class PeakRun:
    size: int  # of the square operands
    gflops: float


@dataclass
class MatmulPeak:
    """Every timed square-matmul run of one precision; the peak is the best of them (see the module doc)."""

    precision: str
    threads: int
    runs: list[PeakRun] = field(default_factory=list)
    skipped: tuple[int, ...] = ()  # sizes left out: too slow to time here (no fast kernels for the dtype)

    @property
    def best(self) -> PeakRun:
        if not self.runs:
            raise ValueError("no matmul run measured yet")
        return max(self.runs, key=lambda run: run.gflops)

    @property
    def gflops(self) -> float:
        return self.best.gflops

    def by_size(self) -> dict[int, float]:
        """The best run of each size."""
        best: dict[int, float] = {}
        for run in self.runs:
            best[run.size] = max(best.get(run.size, 0.0), run.gflops)
        return dict(sorted(best.items()))

    def describe(self) -> str:
        sizes = ", ".join(f"{size}: {rate:.0f}" for size, rate in self.by_size().items())
        skipped = f"; skipped {', '.join(map(str, self.skipped))} (too slow)" if self.skipped else ""
        return (
            f"{self.gflops:.1f} GFLOP/s, best of {len(self.runs)} runs ({self.precision}, {self.threads} "
            f"threads; best per size {sizes}{skipped})"
        )


class MatmulPeakMeter:
    """Measures the matmul peak of ``precision`` on ``device`` in rounds (one timed run per size per round).

    The same code for every precision: operands are created in ``DTYPES[precision]`` and multiplied inside
    ``precision_context``. Sizes go in increasing order; one whose single product would take more than
    ``max_product_seconds`` at the best rate seen so far (at first, a 256x256 probe's) is skipped for good: a
    dtype without fast kernels (e.g. emulated bf16 on an older CPU) would take minutes per product. If the
    smallest size is already too slow, the probe size is timed instead. ``rate`` (size -> GFLOP/s) replaces
    the timing and the probe, for tests.
    """

    PROBE = 256

    def __init__(
        self,
        device: torch.device,
        precision: str,
        sizes: Sequence[int] = PEAK_SIZES,
        min_seconds: float = 0.25,
        max_product_seconds: float = 5.0,
        rate: Callable[[int], float] | None = None,
    ):
        self.device, self.precision = device, precision
        self.min_seconds, self.max_product_seconds = min_seconds, max_product_seconds
        self.sizes = tuple(sorted(sizes))
        self.peak = MatmulPeak(precision, torch.get_num_threads())
        self._rate = rate or self._timed_run
        self._operands: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._fastest = float("inf")  # GFLOP/s that decide which sizes are affordable
        if rate is None:
            self._fastest = max(self._timed_run(self.PROBE, min_seconds=0.05) for _ in range(2))
            self._operands.clear()

    def round(self) -> MatmulPeak:
        """One timed run per affordable size (each warmed up once, the first time); returns the peak so far."""
        for size in self.sizes:
            if size in self.peak.skipped:
                continue
            if 2 * size**3 / (self._fastest * 1e9) > self.max_product_seconds:
                self.peak.skipped = (*self.peak.skipped, size)
                continue
            self._run(size)
        if not self.peak.runs:  # even the smallest size is too slow here
            self._run(self.PROBE)
        return self.peak

    def _run(self, size: int) -> None:
        rate = self._rate(size)
        self._fastest = rate if self._fastest == float("inf") else max(self._fastest, rate)
        self.peak.runs.append(PeakRun(size, rate))

    def _timed_run(self, size: int, min_seconds: float | None = None) -> float:
        min_seconds = self.min_seconds if min_seconds is None else min_seconds
        with precision_context(self.device, self.precision):
            if size not in self._operands:
                dtype = DTYPES[self.precision]
                a = torch.randn(size, size, device=self.device).to(dtype)
                b = torch.randn(size, size, device=self.device).to(dtype)
                self._operands[size] = (a, b)
                a @ b  # warm-up
                _sync(self.device)
            a, b = self._operands[size]
            n, start = 0, time.perf_counter()
            while True:
                a @ b
                n += 1
                _sync(self.device)
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    return 2 * size**3 * n / elapsed / 1e9


def measure_matmul_peak(device: torch.device, precision: str, rounds: int = 3, **meter_kw) -> MatmulPeak:
    """The matmul peak of ``precision``: the best run of ``rounds`` rounds over the sizes."""
    meter = MatmulPeakMeter(device, precision, **meter_kw)
    for _ in range(rounds):
        meter.round()
    return meter.peak


@dataclass(frozen=True)
class Share:
    """A step's share of the matmul peak, never above 1 (see the module doc for the raised case)."""

    share: float
    peak_gflops: float  # the peak the share is of: the measured best, or the step's rate if that is higher
    measured_gflops: float
    runs: int
    raised: bool

    def peak_cell(self) -> str:
        if self.raised:
            return (
                f"{self.peak_gflops:.0f} GFLOP/s (raised to the step's rate; measured best of {self.runs}: "
                f"{self.measured_gflops:.0f})"
            )
        return f"{self.peak_gflops:.0f} GFLOP/s (best of {self.runs})"

    def share_cell(self) -> str:
        return f"{self.share:.0%}" + (" (peak under-measured)" if self.raised else "")


def share_of_peak(achieved_gflops: float, peak: MatmulPeak) -> Share:
    """``achieved / peak``, with the peak raised to ``achieved`` when the step beat every measured run."""
    measured = peak.gflops
    raised = achieved_gflops > measured
    used = achieved_gflops if raised else measured
    return Share(achieved_gflops / used, used, measured, len(peak.runs), raised)


def report_rows(
    seconds: dict[str, float], batch: int, flops_per_pair: float, peak: MatmulPeak
) -> list[dict[str, str]]:
    """One row per attention variant: s/step, pairs/s, GFLOP/s, the peak and the share (<= 100%)."""
    rows = []
    for name, sec in seconds.items():
        pairs = batch / sec
        achieved = flops_per_pair * pairs / 1e9
        share = share_of_peak(achieved, peak)
        rows.append(
            {
                "attention": name,
                "s/step": f"{sec:.3f}",
                "pairs/s": f"{pairs:.2f}",
                "GFLOP/s": f"{achieved:.1f}",
                "matmul peak": share.peak_cell(),
                "% of peak": share.share_cell(),
                "_raised": "yes" if share.raised else "",
            }
        )
    return rows


def format_table(rows: Iterable[dict[str, str]], columns: Sequence[str]) -> str:
    rows = list(rows)
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(r[c].ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_steps(
    model: CroCoNet,
    batch: int,
    height: int,
    width: int,
    precision: str,
    device: torch.device,
    steps: int,
    warmup: int,
    variants: tuple[tuple[str, bool], ...] = (("sdpa", True),),
    between: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Median seconds per training step for each attention variant (name, fused). The variants alternate step
    by step, so that load from other processes on a shared machine hits them alike; ``between`` (e.g. a round
    of the matmul peak) runs after each timed iteration, outside the timing."""  # fmt: skip
    criterion = MaskedMSE()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    img1 = torch.randn(batch, 3, height, width, device=device)
    img2 = torch.randn(batch, 3, height, width, device=device)
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for i in range(warmup + steps):
        for name, fused in variants:
            set_fused_attn(model, fused)
            _sync(device)
            start = time.perf_counter()
            with precision_context(device, precision):
                loss = criterion(*model(img1, img2))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
        if i >= warmup and between is not None:
            between()
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def set_fused_attn(model: torch.nn.Module, fused: bool) -> None:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


def main(argv: list[str] | None = None) -> list[dict[str, str]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="croco_v1")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img", type=int, nargs="+", default=[224], help="H [W]")
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--mask-ratio", type=float, default=0.9)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--compare-manual", action="store_true", help="also time the explicit-softmax attention path"
    )
    ap.add_argument("--peak-sizes", type=int, nargs="+", default=list(PEAK_SIZES), help="matmul peak sizes")
    ap.add_argument("--remeasure", type=int, default=2,
                    help="extra peak rounds when a step beats the measured peak")  # fmt: skip
    ap.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    ap.add_argument("--no-record", action="store_true", help="print only, do not append to --out")
    args = ap.parse_args(argv)

    load_at_start = os.getloadavg()[0]  # other processes slow the steps down: record it
    height, width = (args.img * 2)[:2]
    device = torch.device(args.device)
    try:
        kw = model_preset(args.preset)
    except ConfigError as e:
        raise SystemExit(f"--preset: {e}") from None
    model = CroCoNet(**kw, mask_ratio=args.mask_ratio).to(device)
    flops = 3 * forward_flops_per_pair(kw, height, width, args.mask_ratio)
    device_name = _device_name(device)
    print(f"{args.preset} {height}x{width} batch {args.batch} {args.precision} on {device_name}: "
          f"{flops / 1e9:.1f} GFLOP per pair per step")  # fmt: skip

    meter = MatmulPeakMeter(device, args.precision, sizes=args.peak_sizes)
    meter.round()  # the first round, right before the steps; one more after each timed step
    if args.precision != "fp32":
        fp32 = measure_matmul_peak(device, "fp32", rounds=1, sizes=args.peak_sizes)
        if meter.peak.gflops < 0.25 * fp32.gflops:  # e.g. bf16 on a CPU without AVX512-BF16/AMX: emulated
            print(f"  no fast {args.precision} matmul kernels here ({meter.peak.gflops:.2f} vs "
                  f"{fp32.gflops:.0f} GFLOP/s in fp32): a step would take hours; use --precision fp32 "
                  "on this machine")  # fmt: skip
            return []

    variants = (("sdpa", True),) + ((("manual", False),) if args.compare_manual else ())
    results = bench_steps(
        model, args.batch, height, width, args.precision, device, args.steps, args.warmup, variants,
        between=meter.round,
    )  # fmt: skip
    fastest = max(flops * args.batch / sec / 1e9 for sec in results.values())
    if fastest > meter.peak.gflops and args.remeasure:
        print(f"  a step ran at {fastest:.1f} GFLOP/s, above the measured peak {meter.peak.gflops:.1f}: "
              f"{args.remeasure} more peak rounds")  # fmt: skip
        for _ in range(args.remeasure):
            meter.round()
    peak = meter.peak
    if peak.threads != torch.get_num_threads():
        raise RuntimeError("the thread count changed between the peak and the step measurements")
    print(f"  matmul peak: {peak.describe()}")
    rows = report_rows(results, args.batch, flops, peak)
    print(format_table(rows, PRINTED))
    if any(row["_raised"] for row in rows):
        print(f"  a step beat every one of the {len(peak.runs)} peak runs: the measured peak under-estimates "
              "this hardware, so the peak is raised to the step's rate and the share shows 100%")  # fmt: skip
    if "manual" in results:
        print(f"  sdpa is {results['manual'] / results['sdpa']:.2f}x the speed of the explicit-softmax path")
    if not args.no_record:
        meta = {
            "date": dt.date.today().isoformat(), "device": device_name, "preset": args.preset,
            "size": f"{height}x{width}", "batch": str(args.batch), "precision": args.precision,
            "load": f"{load_at_start:.1f} → {os.getloadavg()[0]:.1f}",
        }  # fmt: skip
        for row in rows:
            append_row(args.out, SECTION, COLUMNS, [{**meta, **row}[c] for c in COLUMNS], intro=SECTION_INTRO)
        print(f"recorded in {args.out}")
    return rows


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({cpu_flags()}; {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
