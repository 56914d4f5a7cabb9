"""The pretraining step under ``torch.compile``: no graph breaks, no data-dependent shapes, the same numbers.

The visible tokens are gathered with indices instead of boolean indexing; these tests pin that it changes
nothing (bit-identical to boolean indexing) and that the step traces as one graph."""

from __future__ import annotations

import pytest
import torch

from croco.models import CroCoNet, MaskedMSE
from croco.models.masking import RandomMask, num_masked, visible_indices


def _shallow(kwargs: dict, **overrides) -> dict:
    """The tiny preset with fewer blocks: tracing time grows with depth, the code paths do not."""
    return {**kwargs, "enc_depth": 2, "dec_depth": 1, **overrides}


def _step_inputs(batch: int = 2, size: int = 64, ratio: float = 0.75) -> tuple[torch.Tensor, ...]:
    n = (size // 8) ** 2
    mask = RandomMask(ratio)(batch, n, generator=torch.Generator().manual_seed(1))
    return torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size), mask


def _loss_fn(model: CroCoNet, criterion: MaskedMSE):
    def step(img1: torch.Tensor, img2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return criterion(*model(img1, img2, mask, check_mask=False))

    return step


def test_visible_indices_gather_equals_boolean_indexing():
    mask = RandomMask(0.75)(3, 64, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 64, 5)
    keep = visible_indices(mask, 64 - num_masked(64, 0.75))
    assert bool((keep.diff(dim=1) > 0).all()), "ascending positions in every row"
    gathered = x.gather(1, keep[..., None].expand(-1, -1, 5))
    assert torch.equal(gathered, x[~mask].view(3, -1, 5))


@pytest.mark.parametrize("decoder", ["cross", "cat"])
@pytest.mark.parametrize("pos_embed", ["cosine", "RoPE100"])
def test_gathered_forward_is_bit_identical_to_boolean_indexing(tiny_kwargs, pos_embed, decoder):
    """A reference pass written with the official boolean indexing against ``forward``: identical bits."""
    model = CroCoNet(**{**tiny_kwargs, "pos_embed": pos_embed, "decoder": decoder}, mask_ratio=0.75).eval()
    img1, img2, mask = _step_inputs()
    with torch.no_grad():
        pred, _, _ = model(img1, img2, mask)
        x, pos = model.patch_embed(img1)
        if model.enc_pos_embed is not None:
            x = x + model.enc_pos_embed
        B, _, C = x.shape
        x, posvis = x[~mask].view(B, -1, C), pos[~mask].view(B, -1, 2)
        for block in model.enc_blocks:
            x = block(x, posvis)
        feat2, pos2 = model._encode_image(img2)
        vis = model.decoder_embed(model.enc_norm(x))
        full = model.mask_token.repeat(B, mask.shape[1], 1)
        full[~mask] = vis.reshape(-1, vis.shape[-1])
        reference = model.prediction_head(_decode_full(model, full, pos, feat2, pos2))
    assert torch.equal(pred, reference)


def _decode_full(model: CroCoNet, x1: torch.Tensor, pos1: torch.Tensor, feat2: torch.Tensor, pos2: torch.Tensor):
    """The decoder on an already filled image-1 sequence (decoder-embedded), as the official code runs it."""
    x2 = model.decoder_embed(feat2)
    if model.dec_pos_embed is not None:
        x1, x2 = x1 + model.dec_pos_embed, x2 + model.dec_pos_embed
    if model.decoder_type == "cross":
        for block in model.dec_blocks:
            x1, x2 = block(x1, x2, pos1, pos2)
        return model.dec_norm(x1)
    view = model.dec_view_embed
    x = torch.cat([x1 + view[0], x2 + view[1]], dim=1)
    pos = torch.cat([pos1, pos2], dim=1)
    for block in model.dec_blocks:
        x = block(x, pos)
    return model.dec_norm(x[:, : x1.shape[1]])


def test_unchecked_mask_skips_the_host_read_and_checked_mask_keeps_it(tiny_kwargs):
    model = CroCoNet(**tiny_kwargs, mask_ratio=0.75)
    img1, img2, mask = _step_inputs()
    checked = model(img1, img2, mask)
    unchecked = model(img1, img2, mask, check_mask=False)
    assert torch.equal(checked[0], unchecked[0])
    uneven = mask.clone()
    uneven[0, ~mask[0]] = True  # row 0 masks everything: refused when checked
    with pytest.raises(ValueError, match="same number of patches"):
        model(img1, img2, uneven)


def test_training_step_has_no_graph_breaks(tiny_kwargs):
    """forward + loss trace as one graph: no ``.item()``, no boolean indexing, no data-dependent shape, with
    RoPE (a given mask) and with cosine positions (the network drawing its own mask)."""
    img1, img2, mask = _step_inputs()
    torch._dynamo.reset()
    rope = CroCoNet(**_shallow(tiny_kwargs), mask_ratio=0.75)
    explained = torch._dynamo.explain(_loss_fn(rope, MaskedMSE()))(img1, img2, mask)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    cosine = CroCoNet(**_shallow(tiny_kwargs, pos_embed="cosine"), mask_ratio=0.75)
    explained = torch._dynamo.explain(lambda a, b: MaskedMSE()(*cosine(a, b)))(img1, img2)
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize(
    "backend, loss_tol, grad_tol",
    [
        ("aot_eager", (1e-5, 1e-6), (1e-4, 1e-6)),  # one forward and one backward graph (AOT autograd)
        pytest.param("inductor", (1e-4, 1e-5), (1e-3, 1e-5), marks=pytest.mark.slow),  # the real compiler, CPU
    ],
)
def test_compiled_step_matches_eager_forward_and_backward(tiny_kwargs, backend, loss_tol, grad_tol):
    """The step compiled whole (fullgraph) against eager: same loss and gradients within float tolerance."""
    from torch._dynamo.testing import CompileCounterWithBackend

    model = CroCoNet(**_shallow(tiny_kwargs), mask_ratio=0.75)
    criterion = MaskedMSE()
    img1, img2, mask = _step_inputs()
    eager_loss = _loss_fn(model, criterion)(img1, img2, mask)
    eager_loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    loss = torch.compile(_loss_fn(model, criterion), backend=counter, fullgraph=True)(img1, img2, mask)
    loss.backward()
    assert counter.frame_count == 1
    torch.testing.assert_close(loss, eager_loss, rtol=loss_tol[0], atol=loss_tol[1])
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, eager_grads[name], rtol=grad_tol[0], atol=grad_tol[1], msg=name)
