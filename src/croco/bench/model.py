"""Training-step throughput of CroCoNet: pairs/s, achieved GFLOP/s, the share of the device's peak, memory.

One step = forward, backward and an AdamW update, on random images, with the paper's masking. The FLOP count is
analytic (matrix multiplications only; 3x the forward pass for a training step), so numbers from different
machines compare.

    python -m croco.bench.model --preset croco_v1 --batch 8 --img 224 --precision bf16
    python -m croco.bench.model --preset tiny --img 64 96 --variants official project project-compiled
    python -m croco.bench.model --preset croco_v1 --attention-table     # what attn_backend=auto picks

Variants (``VARIANTS``) run side by side in one process, alternating step by step, each on its own copy of the
same initial weights with its own optimiser:

* ``official``: the computation of naver/croco (``models/croco.py``, ``models/blocks.py``): explicit-softmax
  attention, boolean-mask indexing of the visible tokens and of the decoder's mask-token fill, AdamW without
  fused kernels. The project's explicit path run this way is its stand-in (same numbers; the upstream tests
  check the network against the official code);
* ``project``: this code's defaults: ``attn_backend=auto``, index gathering, fused AdamW where torch has it
  for the device, the channels-last patch embedding where ``CHANNELS_LAST_HELPS`` says it was measured faster;
* ``project-compiled``: the same step (forward + loss) through ``torch.compile``;
* an attention backend name (``manual``, ``sdpa``, ``sdpa_math``, ...): ``project`` with that backend.

Each run appends a row per variant to docs/benchmarks.md (section "Model training step"); the row names the
device (on a CPU: model name, family/model numbers, whether it has AVX512-BF16 and AMX-BF16, thread count),
torch version, the peak it was compared with and how that peak was obtained, the speed relative to
``official`` and the peak memory (CUDA: the variant's peak allocation; CPU: the process's peak resident set,
all variants together).

On a GPU the share is of the datasheet dense bf16 peak (``DATASHEET_BF16_TFLOPS``), whatever the precision.

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
import copy
import datetime as dt
import os
import resource
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from croco.bench.record import BENCHMARKS_MD, append_row, cpu_flags, cpu_name
from croco.models import CroCoNet, MaskedMSE
from croco.models.blocks import ATTN_BACKENDS
from croco.models.masking import RandomMask, num_masked
from croco.tasks.optim import fused_adamw_supported
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
    "steps and the peak runs). `variant`: `official` (the naver/croco computation: explicit softmax, boolean "
    "masking, unfused AdamW), `project` (attn_backend=auto, index gather, fused AdamW where torch has it), "
    "`project-compiled` (the same through torch.compile); `vs official` = its pairs/s over official's in the "
    "same run (variants alternate step by step). On a GPU `peak` is the datasheet dense bf16 peak. "
    "`peak memory`: CUDA, the variant's peak allocation; CPU, the process's peak RSS (all variants)."
)
COLUMNS = [
    "date", "device", "torch", "preset", "size", "batch", "precision", "variant", "s/step", "pairs/s",
    "vs official", "GFLOP/s", "peak", "% of peak", "peak memory", "load",
]  # fmt: skip
PRINTED = ["variant", "s/step", "pairs/s", "vs official", "GFLOP/s", "peak", "% of peak", "peak memory"]

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, without sparsity), by device-name part.
DATASHEET_BF16_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0, "GH200": 989.0,
    "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "A10G": 70.0, "A10": 125.0, "L4": 121.0,
    "RTX 4090": 165.0, "RTX 3090": 71.0, "A6000": 155.0,
}  # fmt: skip

# The channels-last patch embedding, by (device type, precision). CPU: the convolution alone (forward +
# backward, batch 16 at 224, best of 15 interleaved runs) on the CPU of docs/benchmarks.md took 179 ms in
# channels-last vs 211 ms in NCHW in fp32; in bf16 two runs disagreed (167 vs 230 ms, 162 vs 125 ms), so NCHW
# stays. CUDA: cuDNN's fast strided-convolution kernels with bf16 / fp32 tensor cores are the NHWC ones.
CHANNELS_LAST_HELPS = {
    ("cpu", "fp32"): True, ("cpu", "bf16"): False,
    ("cuda", "fp32"): True, ("cuda", "bf16"): True, ("cuda", "fp16"): True,
}  # fmt: skip


@dataclass(frozen=True)
class StepVariant:
    """One way to run the training step (see the module doc)."""

    name: str
    attention: str = "auto"
    boolean_masking: bool = False  # the official ``x[~mask]`` indexing instead of the index gather
    compiled: bool = False
    fused_adamw: bool = True  # where the device has the fused kernel
    channels_last: bool | None = None  # None: ``CHANNELS_LAST_HELPS`` of the device and precision
    precision: str | None = None  # None: the run's ``--precision``


VARIANTS = {
    "official": StepVariant("official", attention="manual", boolean_masking=True, fused_adamw=False,
                            channels_last=False),
    "project": StepVariant("project"),
    "project-compiled": StepVariant("project-compiled", compiled=True),
    "official-fp32": StepVariant("official-fp32", attention="manual", boolean_masking=True, fused_adamw=False,
                                 channels_last=False, precision="fp32"),
    **{name: StepVariant(name, attention=name) for name in ATTN_BACKENDS if name != "auto"},
}  # fmt: skip


def forward_flops_per_pair(kw: dict, height: int, width: int, mask_ratio: float) -> float:
    """Multiply-accumulate FLOPs (x2) of one pretraining forward pass for one pair."""
    p, D, d = kw["patch_size"], kw["enc_embed_dim"], kw["dec_embed_dim"]
    mlp = kw.get("mlp_ratio", 4)
    n = (height // p) * (width // p)
    n_vis = n - num_masked(n, mask_ratio)

    def encoder_block(t: int) -> float:  # qkv + proj + mlp, then q.k and attn.v
        return 2 * t * (4 + 2 * mlp) * D * D + 4 * t * t * D

    decoder = kw.get("decoder", "cross")
    views = 1 if decoder == "mae" else 2  # the single-view baseline never encodes image 2
    patch_embed = 2 * (views * n) * (3 * p * p) * D
    encoder = kw["enc_depth"] * (encoder_block(n_vis) + (encoder_block(n) if views == 2 else 0))
    embed = 2 * (n_vis + (n if views == 2 else 0)) * D * d
    if decoder == "mae":  # self-attention over image 1
        block = 2 * n * (4 + 2 * mlp) * d * d + 4 * n * n * d
    elif decoder == "cross":
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


def datasheet_peak(device_name: str) -> float | None:
    """The datasheet dense bf16 GFLOP/s of a GPU named ``device_name``; None when it is not in the table."""
    for part in sorted(DATASHEET_BF16_TFLOPS, key=len, reverse=True):  # "H100 SXM" before "H100"
        if part in device_name:
            return DATASHEET_BF16_TFLOPS[part] * 1e3
    return None


def datasheet_matmul_peak(gflops: float, precision: str) -> MatmulPeak:
    """A datasheet figure in the shape of a measured peak (one run), so shares are computed one way."""
    return MatmulPeak(f"{precision}; datasheet bf16", 0, [PeakRun(0, gflops)])


def report_rows(
    seconds: dict[str, float], batch: int, flops_per_pair: float, peak: MatmulPeak, datasheet: bool = False
) -> list[dict[str, str]]:
    """One row per variant: s/step, pairs/s, speed vs ``official``, GFLOP/s, the peak and the share (<= 100%)."""
    rows = []
    reference = seconds.get("official")
    for name, sec in seconds.items():
        pairs = batch / sec
        achieved = flops_per_pair * pairs / 1e9
        share = share_of_peak(achieved, peak)
        rows.append(
            {
                "variant": name,
                "s/step": f"{sec:.3f}",
                "pairs/s": f"{pairs:.2f}",
                "vs official": f"{reference / sec:.2f}x" if reference else "-",
                "GFLOP/s": f"{achieved:.1f}",
                "peak": f"{peak.gflops / 1e3:.0f} TFLOP/s (datasheet bf16)" if datasheet else share.peak_cell(),
                "% of peak": share.share_cell(),
                "peak memory": "-",  # filled in by ``main``, which knows the device
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


def official_forward(
    model: CroCoNet, img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pretraining pass as naver/croco ``models/croco.py`` computes it: boolean indexing of the visible
    tokens (``x[~masks].view(B, -1, C)``) and a ``mask_token.repeat`` filled by boolean assignment. The blocks
    are the project's (with ``attn_backend="manual"``: the official explicit softmax)."""
    x, pos = model.patch_embed(img1)
    grid1 = model.patch_embed.grid(*img1.shape[-2:])
    if model.enc_pos_embed is not None:
        x = x + model.cosine_pos_embed("enc_pos_embed", grid1)
    B, N, C = x.shape
    x, posvis = x[~mask].view(B, -1, C), pos[~mask].view(B, -1, 2)
    for block in model.enc_blocks:
        x = block(x, posvis)
    feat1 = model.enc_norm(x)
    feat2, pos2 = model._encode_image(img2)
    visible = model.decoder_embed(feat1)
    x1 = model.mask_token.repeat(B, N, 1).to(dtype=visible.dtype)
    x1[~mask] = visible.view(-1, visible.shape[-1])
    x2 = model.decoder_embed(feat2)
    if model.dec_pos_embed is not None:
        x1 = x1 + model.cosine_pos_embed("dec_pos_embed", grid1)
        x2 = x2 + model.cosine_pos_embed("dec_pos_embed", model.patch_embed.grid(*img2.shape[-2:]))
    if model.decoder_type == "cross":
        for block in model.dec_blocks:
            x1, x2 = block(x1, x2, pos, pos2)
        out = x1
    else:
        view = model.dec_view_embed.to(x1.dtype)
        both, both_pos = torch.cat([x1 + view[0], x2 + view[1]], dim=1), torch.cat([pos, pos2], dim=1)
        for block in model.dec_blocks:
            both = block(both, both_pos)
        out = both[:, :N]
    return model.prediction_head(model.dec_norm(out)), mask, model.patchify(img1)


class _VariantStep:
    """One variant's model copy, optimiser and (compiled) loss function."""

    def __init__(self, variant: StepVariant, model: CroCoNet, device: torch.device, precision: str):
        precision = variant.precision or precision
        self.variant, self.model, self.device, self.precision = variant, model, device, precision
        model.attn_backend = variant.attention
        cl = variant.channels_last
        model.channels_last = CHANNELS_LAST_HELPS.get((device.type, precision), False) if cl is None else cl
        fused = variant.fused_adamw and fused_adamw_supported(device.type)
        kw = {"fused": True} if fused else {}  # else torch's default, as the official code builds it
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, **kw)
        criterion = MaskedMSE()
        if variant.boolean_masking:
            def loss_fn(img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return criterion(*official_forward(model, img1, img2, mask))
        else:
            def loss_fn(img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
                return criterion(*model(img1, img2, mask, check_mask=False))
        self.loss_fn = torch.compile(loss_fn) if variant.compiled else loss_fn
        self.peak_bytes = 0

    def __call__(self, img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with precision_context(self.device, self.precision):
            loss = self.loss_fn(img1, img2, mask)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))


def bench_steps(
    model: CroCoNet,
    batch: int,
    height: int,
    width: int,
    precision: str,
    device: torch.device,
    steps: int,
    warmup: int,
    variants: Sequence[StepVariant] = (VARIANTS["project"],),
    between: Callable[[], object] | None = None,
    memory: dict[str, int] | None = None,
) -> dict[str, float]:
    """Median seconds per training step of each variant, each on its own copy of ``model`` (the first variant
    trains ``model`` itself). The variants alternate step by step on the same images and masks (drawn on the
    device from a seeded generator), so load from other processes on a shared machine hits them alike;
    ``between`` (e.g. a round of the matmul peak) runs after each timed iteration, outside the timing. On
    CUDA, ``memory`` receives each variant's peak allocation in bytes."""
    steppers = [
        _VariantStep(v, model if i == 0 else copy.deepcopy(model), device, precision) for i, v in enumerate(variants)
    ]
    img1 = torch.randn(batch, 3, height, width, device=device)
    img2 = torch.randn(batch, 3, height, width, device=device)
    n = model.patch_embed.grid(height, width)
    masking = RandomMask(model.mask_generator.mask_ratio)
    generator = torch.Generator(device=device).manual_seed(0)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for i in range(warmup + steps):
        mask = masking(batch, n[0] * n[1], device, generator=generator)
        for step in steppers:
            _sync(device)
            start = time.perf_counter()
            step(img1, img2, mask)
            _sync(device)
            if i >= warmup:
                times[step.variant.name].append(time.perf_counter() - start)
        if i >= warmup and between is not None:
            between()
    if memory is not None:
        memory.update({s.variant.name: s.peak_bytes for s in steppers if s.peak_bytes})
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def attention_table(
    device: torch.device, precisions: Sequence[str], shapes: Sequence[tuple[int, int, int, int]], repeats: int = 15
) -> list[dict[str, str]]:
    """Forward + backward time of every attention backend on (batch, heads, tokens, head width) ``shapes``,
    per precision: the best of ``repeats`` rounds in which the backends take turns (load from other processes
    hits them alike). The measurement behind ``AUTO_ATTN_BACKEND``; a backend the device lacks shows "n/a"."""
    rows = []
    backends = [b for b in ATTN_BACKENDS if b != "auto"]
    for precision in precisions:
        total = dict.fromkeys(backends, 0.0)
        for shape in shapes:
            q, k, v = (torch.randn(*shape, device=device, requires_grad=True) for _ in range(3))
            runs = {b: _attention_pass(q, k, v, b, device, precision) for b in backends}
            for backend, run in list(runs.items()):
                try:
                    run()  # warm-up, and the check that the device has the kernel
                except RuntimeError:
                    del runs[backend]
            best = dict.fromkeys(runs, float("inf"))
            for _ in range(repeats):
                for backend, run in runs.items():
                    _sync(device)
                    start = time.perf_counter()
                    run()
                    _sync(device)
                    best[backend] = min(best[backend], time.perf_counter() - start)
            row = {"precision": precision, "shape (B, heads, N, Dh)": str(tuple(shape))}
            for backend in backends:
                seconds = best.get(backend, float("inf"))
                row[backend] = f"{seconds * 1e3:.2f} ms" if seconds != float("inf") else "n/a"
                total[backend] += seconds
            rows.append(row)
        fastest = min(total, key=total.get)
        rows.append({"precision": precision, "shape (B, heads, N, Dh)": "all (sum)", "fastest": fastest,
                     **{b: (f"{t * 1e3:.2f} ms" if t != float("inf") else "n/a") for b, t in total.items()}})
    return rows


def _attention_pass(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str, device: torch.device, precision: str
) -> Callable[[], None]:
    from croco.models.blocks import _attend  # the function the blocks call

    def run() -> None:
        with precision_context(device, precision):
            out = _attend(q, k, v, backend)
        out.float().square().mean().backward()

    return run


def attention_shapes(kw: dict, batch: int, height: int, width: int, mask_ratio: float) -> list[tuple[int, ...]]:
    """The attention shapes of a pretraining step: encoder on visible and on all tokens, decoder."""
    n = (height // kw["patch_size"]) * (width // kw["patch_size"])
    n_vis = n - num_masked(n, mask_ratio)
    enc, dec = kw["enc_num_heads"], kw["dec_num_heads"]
    return [
        (batch, enc, n_vis, kw["enc_embed_dim"] // enc),
        (batch, enc, n, kw["enc_embed_dim"] // enc),
        (batch, dec, n, kw["dec_embed_dim"] // dec),
    ]


def _memory_cell(device: torch.device, memory: dict[str, int], name: str) -> str:
    if device.type == "cuda":
        return f"{memory.get(name, 0) / 2**30:.2f} GiB"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return f"{rss_kib / 2**20:.2f} GiB (process RSS)"


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
    ap.add_argument("--variants", nargs="+", default=["official", "project"], metavar="VARIANT",
                    help=f"from {', '.join(VARIANTS)}")  # fmt: skip
    ap.add_argument("--attention-table", action="store_true",
                    help="time every attention backend on the preset's shapes (fp32 and bf16) and stop")  # fmt: skip
    ap.add_argument("--peak-sizes", type=int, nargs="+", default=list(PEAK_SIZES), help="matmul peak sizes")
    ap.add_argument("--remeasure", type=int, default=2,
                    help="extra peak rounds when a step beats the measured peak")  # fmt: skip
    ap.add_argument("--out", type=Path, default=BENCHMARKS_MD)
    ap.add_argument("--no-record", action="store_true", help="print only, do not append to --out")
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; allowed: {', '.join(VARIANTS)}")

    load_at_start = os.getloadavg()[0]  # other processes slow the steps down: record it
    height, width = (args.img * 2)[:2]
    device = torch.device(args.device)
    try:
        kw = model_preset(args.preset)
    except ConfigError as e:
        raise SystemExit(f"--preset: {e}") from None
    device_name = _device_name(device)
    if args.attention_table:
        return _attention_table_main(args, kw, device, device_name, height, width)
    model = CroCoNet(**kw, mask_ratio=args.mask_ratio).to(device)
    flops = 3 * forward_flops_per_pair(kw, height, width, args.mask_ratio)
    print(f"{args.preset} {height}x{width} batch {args.batch} {args.precision} on {device_name}, torch "
          f"{torch.__version__}: {flops / 1e9:.1f} GFLOP per pair per step")  # fmt: skip

    datasheet = datasheet_peak(device_name) if device.type == "cuda" else None
    meter = None
    if datasheet is None:
        meter = MatmulPeakMeter(device, args.precision, sizes=args.peak_sizes)
        meter.round()  # the first round, right before the steps; one more after each timed step
    if args.precision != "fp32" and device.type == "cpu":
        fp32 = measure_matmul_peak(device, "fp32", rounds=1, sizes=args.peak_sizes)
        assert meter is not None
        if meter.peak.gflops < 0.25 * fp32.gflops:  # e.g. bf16 on a CPU without AVX512-BF16/AMX: emulated
            print(f"  no fast {args.precision} matmul kernels here ({meter.peak.gflops:.2f} vs "
                  f"{fp32.gflops:.0f} GFLOP/s in fp32): a step would take hours; use --precision fp32 "
                  "on this machine")  # fmt: skip
            return []

    fp32_meter = None  # bf16 on a CPU: is it faster than fp32 here at all? Measured in the same rounds
    if args.precision == "bf16" and meter is not None:
        fp32_meter = MatmulPeakMeter(device, "fp32", sizes=args.peak_sizes)

    def between() -> None:
        if meter is not None:
            meter.round()
        if fp32_meter is not None:
            fp32_meter.round()

    memory: dict[str, int] = {}
    results = bench_steps(
        model, args.batch, height, width, args.precision, device, args.steps, args.warmup,
        [VARIANTS[v] for v in args.variants], between=between, memory=memory,
    )  # fmt: skip
    fastest = max(flops * args.batch / sec / 1e9 for sec in results.values())
    if meter is not None and fastest > meter.peak.gflops and args.remeasure:
        print(f"  a step ran at {fastest:.1f} GFLOP/s, above the measured peak {meter.peak.gflops:.1f}: "
              f"{args.remeasure} more peak rounds")  # fmt: skip
        for _ in range(args.remeasure):
            meter.round()
    if meter is not None:
        peak = meter.peak
        if peak.threads != torch.get_num_threads():
            raise RuntimeError("the thread count changed between the peak and the step measurements")
        print(f"  matmul peak: {peak.describe()}")
    else:
        peak = datasheet_matmul_peak(datasheet, args.precision)
        print(f"  peak: {datasheet / 1e3:.0f} TFLOP/s dense bf16 (datasheet of {device_name})")
    rows = report_rows(results, args.batch, flops, peak, datasheet=meter is None)
    for row in rows:
        row["peak memory"] = _memory_cell(device, memory, row["variant"])
    print(format_table(rows, PRINTED))
    if any(row["_raised"] for row in rows):
        print(f"  a step beat every one of the {len(peak.runs)} peak runs: the measured peak under-estimates "
              "this hardware, so the peak is raised to the step's rate and the share shows 100%")  # fmt: skip
    if fp32_meter is not None:
        print(bf16_verdict(meter.peak, fp32_meter.peak, results))
    if not args.no_record:
        meta = {
            "date": dt.date.today().isoformat(), "device": device_name, "torch": torch.__version__,
            "preset": args.preset, "size": f"{height}x{width}", "batch": str(args.batch),
            "precision": args.precision, "load": f"{load_at_start:.1f} → {os.getloadavg()[0]:.1f}",
        }  # fmt: skip
        for row in rows:
            own = VARIANTS[row["variant"]].precision  # a variant timed in its own precision says so
            cells = {**meta, **row, **({"precision": own} if own else {})}
            append_row(args.out, SECTION, COLUMNS, [cells[c] for c in COLUMNS], intro=SECTION_INTRO)
        print(f"recorded in {args.out}")
    return rows


def bf16_verdict(bf16: MatmulPeak, fp32: MatmulPeak, seconds: dict[str, float]) -> str:
    """Whether bf16 is faster than fp32 here, in words: the two matmul peaks (measured in the same rounds) and,
    with an ``official-fp32`` variant in the run, the bf16 steps against that fp32 step."""
    ratio = bf16.gflops / fp32.gflops
    verdict = "faster" if ratio > 1.2 else "NOT faster"
    lines = [
        (
            f"  bf16 matmuls are {verdict} than fp32 here ({bf16.gflops:.0f} vs {fp32.gflops:.0f} GFLOP/s, "
            f"{ratio:.2f}x, best runs of the same rounds; {cpu_flags()})"
        )
    ]
    reference = seconds.get("official-fp32")
    if reference:
        for name, sec in seconds.items():
            if name != "official-fp32":
                verdict = "faster" if sec < reference else "NOT faster"
                lines.append(f"  {name} under bf16 autocast is {verdict} than the official fp32 step "
                             f"({sec:.2f} vs {reference:.2f} s/step)")  # fmt: skip
    return "\n".join(lines)


ATTENTION_SECTION = "Attention backends (forward + backward)"
ATTENTION_INTRO = (
    "`python -m croco.bench.model --attention-table`: best of 15 forward + backward passes of each backend on "
    "the attention shapes of a pretraining step (encoder on the visible tokens, on all tokens, decoder); the "
    "`all (sum)` row's fastest backend is what `attn_backend=auto` uses for that device and precision "
    "(`AUTO_ATTN_BACKEND` in `croco/models/blocks.py`)."
)


def _attention_table_main(args, kw: dict, device: torch.device, device_name: str, height: int, width: int):
    shapes = attention_shapes(kw, args.batch, height, width, args.mask_ratio)
    precisions = ["fp32", "bf16"]
    rows = attention_table(device, precisions, shapes)
    backends = [b for b in ATTN_BACKENDS if b != "auto"]
    columns = ["precision", "shape (B, heads, N, Dh)", *backends, "fastest"]
    for row in rows:
        row.setdefault("fastest", "")
    print(f"{args.preset} {height}x{width} batch {args.batch} on {device_name}, torch {torch.__version__}")
    print(format_table(rows, columns))
    if not args.no_record:
        meta = {"date": dt.date.today().isoformat(), "device": device_name, "torch": torch.__version__,
                "preset": f"{args.preset} {height}x{width}"}  # fmt: skip
        cols = [*meta, *columns]
        for row in rows:
            if row["fastest"]:
                append_row(args.out, ATTENTION_SECTION, cols, [{**meta, **row}[c] for c in cols],
                           intro=ATTENTION_INTRO)  # fmt: skip
        print(f"recorded in {args.out}")
    return rows


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({cpu_flags()}; {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
