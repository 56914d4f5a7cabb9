"""CUDA checks of the tiny CroCoNet: a bf16-autocast training step, ``torch.compile``, SDPA backend parity.

    pytest -m gpu tests/gpu        # only the CUDA tests (each skips, with the reason, without a CUDA device)
    pytest tests/gpu               # those plus the CPU runs of the same comparison helpers
    pytest -m "not gpu"            # the whole suite without the CUDA tests

Tests marked ``gpu`` need ``torch.cuda.is_available()``; without it they are skipped (``-ra`` lists why).
Every comparison lives in a helper (``compare_training_step``, ``compare_compiled_forward``,
``compare_sdpa_backend``) that takes the device; the unmarked tests at the end call the same helpers with
``device="cpu"`` (fp32 and bf16 autocast, ``aot_eager`` instead of inductor for the compile check, the SDPA
backends the CPU has), so the comparison code itself runs on every machine and only the device differs.

The model is built from the keyword arguments in ``conf/model/tiny.yaml`` (read directly with OmegaConf).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn.attention import SDPBackend, sdpa_kernel

from croco.models import CroCoNet, MaskedMSE
from croco.models.blocks import Attention, CrossAttention
from croco.models.pos_embed import RoPE2D

TINY_YAML = Path(__file__).resolve().parents[2] / "conf" / "model" / "tiny.yaml"
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="needs a CUDA device: torch.cuda.is_available() is False"
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# max |fused - explicit| allowed, relative to max |explicit in fp32| (bf16 keeps 8 mantissa bits, fp16 11)
ATTN_TOL = {"fp32": 1e-5, "bf16": 3e-2, "fp16": 5e-3}
NO_KERNEL = ("No available kernel", "No viable backend")  # what SDPA raises when the chosen backend can't run


# ----------------------------------------------------------------------------------------------- helpers
def tiny_kwargs() -> dict:
    return OmegaConf.to_container(OmegaConf.load(TINY_YAML), resolve=True)


def tiny_inputs(batch: int = 4, seed: int = 1) -> tuple[CroCoNet, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded tiny model, an image pair and a fixed mask (on the CPU; move them to the device)."""
    kw = tiny_kwargs()
    torch.manual_seed(seed)
    model = CroCoNet(**kw)
    generator = torch.Generator().manual_seed(seed)
    size = kw["img_size"]
    img1 = torch.randn(batch, 3, size, size, generator=generator)
    img2 = torch.randn(batch, 3, size, size, generator=generator)
    mask = model.mask_generator(batch, (size // kw["patch_size"]) ** 2, generator=generator)
    return model, img1, img2, mask


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """fp32 references without TF32 (cuDNN convolutions use it by default on Ampere and later)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return strict_fp32()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])


@dataclass
class StepResult:
    loss: torch.Tensor
    grads: dict[str, torch.Tensor]
    updates: dict[str, torch.Tensor]  # parameter after the AdamW step minus before


def training_step(model: CroCoNet, img1, img2, mask, device: str, precision: str) -> StepResult:
    """One training step as the pretraining task runs it: forward + MaskedMSE under autocast, backward and
    AdamW outside it (fp32 master weights)."""
    model = model.to(device).train()
    img1, img2, mask = img1.to(device), img2.to(device), mask.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)
    with autocast(device, precision):
        pred, mask_out, target = model(img1, img2, mask)
        loss = MaskedMSE(norm_pix_loss=True)(pred, mask_out, target)
    loss.backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    updates = {n: (p.detach() - before[n]).float().cpu() for n, p in model.named_parameters()}
    return StepResult(loss.detach().float().cpu(), grads, updates)


def _flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors.values()])


def compare_training_step(device: str, precision: str) -> dict[str, float]:
    """A ``precision`` step against an fp32 step of the same model on the same data and mask.

    Asserts a finite loss, gradients and update, a loss within 2% of fp32, all gradients within 5% (global
    relative L2 error; each tensor within 20%), and the same AdamW update direction (sign) on 95% of the
    weights (Adam's first update is lr * sign(g), so a gradient near zero may flip). Returns the errors."""
    model, img1, img2, mask = tiny_inputs()
    ref = training_step(copy.deepcopy(model), img1, img2, mask, device, "fp32")
    low = training_step(copy.deepcopy(model), img1, img2, mask, device, precision)
    g_ref, g_low, u_ref, u_low = _flat(ref.grads), _flat(low.grads), _flat(ref.updates), _flat(low.updates)
    assert torch.isfinite(low.loss) and torch.isfinite(g_low).all() and torch.isfinite(u_low).all()
    assert g_low.abs().sum() > 0 and u_low.abs().sum() > 0, "the step did not train anything"
    errors = {
        "loss": abs(low.loss.item() - ref.loss.item()) / abs(ref.loss.item()),
        "grad": ((g_low - g_ref).norm() / g_ref.norm()).item(),
        "worst_tensor": max(
            ((low.grads[n] - g).norm() / g.norm().clamp_min(1e-12)).item() for n, g in ref.grads.items()
        ),
        "sign_agreement": (torch.sign(u_low) == torch.sign(u_ref)).float().mean().item(),
    }
    assert errors["loss"] < 2e-2, errors
    assert errors["grad"] < 5e-2, errors
    assert errors["worst_tensor"] < 0.2, errors
    assert errors["sign_agreement"] > 0.95, errors
    return errors


def compare_compiled_forward(device: str, backend: str = "inductor") -> float:
    """``torch.compile(model)`` against the eager model (fp32, no TF32, eval mode, fixed mask): asserts every
    output matches within 1e-4 of the prediction's scale and returns the largest relative difference."""
    model, img1, img2, mask = tiny_inputs()
    model = model.to(device).eval()
    img1, img2, mask = img1.to(device), img2.to(device), mask.to(device)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=backend)
        with torch.no_grad(), strict_fp32():
            eager_out = model(img1, img2, mask)
            compiled_out = compiled(img1, img2, mask)
    finally:
        torch._dynamo.reset()
    pred, pred_c = eager_out[0], compiled_out[0]
    assert torch.isfinite(pred_c).all()
    assert torch.equal(eager_out[1], compiled_out[1]) and torch.equal(eager_out[2], compiled_out[2])
    difference = ((pred_c - pred).abs().max() / pred.abs().max()).item()
    assert difference < 1e-4, difference
    return difference


def _modules(dtype: torch.dtype, device: str) -> tuple[Attention, CrossAttention]:
    """The tiny encoder's self-attention and the decoder's cross-attention, built with the env switch off."""
    kw = tiny_kwargs()
    rope = RoPE2D(base=100.0) if kw["pos_embed"] == "RoPE100" else None
    torch.manual_seed(0)
    with mock.patch.dict(os.environ, {"CROCO_FUSED_ATTN": "0"}):
        attn = Attention(kw["enc_embed_dim"], kw["enc_num_heads"], rope)
        cross = CrossAttention(kw["dec_embed_dim"], kw["dec_num_heads"], rope)
    assert not attn.fused_attn and not cross.fused_attn  # CROCO_FUSED_ATTN=0 selects the explicit softmax
    return attn.to(device, dtype), cross.to(device, dtype)


def _grid_positions(rows: int, cols: int, batch: int, device: str) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([yy, xx], dim=-1).reshape(1, rows * cols, 2).expand(batch, -1, -1).to(device)


def compare_sdpa_backend(device: str, precision: str, backend: SDPBackend) -> dict[str, float]:
    """Self- and cross-attention with ``fused_attn`` (SDPA restricted to ``backend``) against the explicit
    softmax path, in ``precision``: both within ``ATTN_TOL`` of each other and of the explicit path in fp32
    (same rounded weights and inputs). Skips when the device has no kernel of that backend for these
    inputs."""
    dtype = DTYPES[precision]
    attn, cross = _modules(dtype, device)
    generator = torch.Generator().manual_seed(2)
    batch = 2
    x = torch.randn(batch, 64, attn.qkv.in_features, generator=generator).to(device, dtype)  # 8x8 grid
    query = torch.randn(batch, 64, cross.projq.in_features, generator=generator).to(device, dtype)
    memory = torch.randn(batch, 60, cross.projq.in_features, generator=generator).to(device, dtype)  # 6x10
    pos, mem_pos = _grid_positions(8, 8, batch, device), _grid_positions(6, 10, batch, device)
    cases = {"self": (attn, (x, pos)), "cross": (cross, (query, memory, pos, mem_pos))}
    errors = {}
    with torch.no_grad(), strict_fp32():
        for name, (module, args) in cases.items():
            explicit = module(*args)
            reference = copy.deepcopy(module).float()(
                *(a.float() if a.is_floating_point() else a for a in args)
            )
            module.fused_attn = True
            try:
                with sdpa_kernel([backend]):
                    fused = module(*args)
            except RuntimeError as error:
                if any(text in str(error) for text in NO_KERNEL):
                    pytest.skip(f"{backend.name} has no {precision} kernel on {device} for these inputs")
                raise
            finally:
                module.fused_attn = False
            assert fused.dtype == dtype and torch.isfinite(fused).all()
            scale = reference.abs().max().item()
            errors[name] = (fused.float() - explicit.float()).abs().max().item() / scale
            errors[f"{name}_vs_fp32"] = (fused.float() - reference).abs().max().item() / scale
    assert max(errors.values()) < ATTN_TOL[precision], errors
    return errors


def _cuda_precision(precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16 support")


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# --------------------------------------------------------------------------------------------- CUDA tests
@pytest.mark.gpu
@needs_cuda
def test_bf16_autocast_training_step_matches_fp32_on_cuda():
    _cuda_precision("bf16")
    compare_training_step("cuda", "bf16")


@pytest.mark.gpu
@needs_cuda
def test_compiled_forward_matches_eager_on_cuda():
    if not _has_triton():
        pytest.skip("torch.compile's inductor backend needs triton on CUDA; it is not installed")
    compare_compiled_forward("cuda", backend="inductor")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_sdpa_backend_matches_explicit_softmax_on_cuda(backend, precision):
    _cuda_precision(precision)
    compare_sdpa_backend("cuda", precision, backend)


@pytest.mark.gpu
@needs_cuda
def test_jpeg_batches_decode_on_cuda_like_on_the_cpu(tmp_path):
    """data.decode_on_device on a GPU: nvJPEG's pixels within a few levels of libjpeg-turbo's (their IDCTs differ),
    crops and jitter parameters identical."""
    from croco.data.datamodule import PairDataModule
    from croco.data.transforms import PairTransform, decode_views_on, parse_transforms
    from tests.data.conftest import write_shard

    folder = tmp_path / "pairs"
    write_shard(folder / "shard-00000.h5", [f"s{i}" for i in range(8)], [0.5] * 8, size=64)
    module = PairDataModule([str(folder)], img_size=48, transforms="resize56+crop48+acolor", batch_size=8,
                            num_workers=0, val_fraction=0.0, decode_on_device=True)  # fmt: skip
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    transform = PairTransform(parse_transforms("resize56+crop48+acolor", 48))
    on_cpu = decode_views_on("cpu", dict(batch), transform)
    on_cuda = decode_views_on("cuda", dict(batch), transform)
    for key in ("img1", "img2"):
        assert on_cuda[key].device.type == "cuda"
        difference = (on_cuda[key].cpu().float() - on_cpu[key].float()).abs()
        assert difference.mean() < 1.0 and difference.max() <= 8, key


# ------------------------------------------------------------- the same helpers on the CPU (not marked gpu)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_step_comparison_on_cpu(precision):
    errors = compare_training_step("cpu", precision)
    if precision == "fp32":  # the same computation twice: only the comparison's own plumbing is tested
        assert errors["loss"] == 0.0 and errors["grad"] == 0.0 and errors["sign_agreement"] == 1.0


def test_compiled_forward_comparison_on_cpu():
    # aot_eager: dynamo tracing (graph breaks included) + AOT autograd, without inductor's C++ code generation,
    # which is slow on a small CPU; the CUDA test uses inductor
    compare_compiled_forward("cpu", backend="aot_eager")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_sdpa_backend_comparison_on_cpu(backend, precision):
    compare_sdpa_backend("cpu", precision, backend)  # no EFFICIENT_ATTENTION kernel on CPUs: skipped


def test_the_comparisons_catch_a_wrong_result(monkeypatch):
    """The helpers fail on a real mismatch: attention without the 1/sqrt(d) scale in the fused path."""
    import torch.nn.functional as F

    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: real(q, k, v, scale=1.0))
    with pytest.raises(AssertionError):
        compare_sdpa_backend("cpu", "fp32", SDPBackend.MATH)
