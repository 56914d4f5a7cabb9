"""Does the decoder's cross-attention point at the matching token of view 2?

Flow, stereo matching and relative pose need correspondence: each image-1 token must find where its content lies
in image 2. The cross-view gap (``croco.eval.crossview``) says whether view 2 helps the reconstruction at all,
but a network can use view 2's colours and textures without knowing where they are. This probe asks the
geometric question directly, on pairs whose correspondence is exact by construction:

* image 1 is a window of a view, image 2 the same view's window shifted by whole patches (``-1, 0 or +1`` patch
  along each axis, drawn per pair), so every image-1 token whose match stays inside the window has an exact
  twin in image 2;
* for every decoder block and head, the attention-weighted position ``sum_j a_ij p_j`` of image-1 token ``i``
  over the image-2 token positions ``p_j`` is compared with the true match ``p_i - shift``, in patches;
* the reference is the token's own position ``p_i`` (what attention that ignores content and only follows
  position gives): an error below it means the attention finds the match. ``sharpness`` is the mean largest
  attention weight (1 / number of tokens for uniform attention, 1 for one-hot).

With ``--masked`` the probe runs the pretraining pass instead: image 1 is masked at the network's own ratio and the
error is taken over the *masked* tokens, the queries the pretraining loss trains (a mask token carries a position
but no content, so it can only find its match through what the decoder gathered from the visible tokens). The
unmasked probe is what a downstream pair looks like: every image-1 token visible.

The attention maps are the ones the network uses: they are recomputed from each ``CrossAttention``'s inputs in
a forward hook (projections, RoPE, scaled softmax) and checked in the tests against the module's output.

    python -m croco.eval.localisation --ckpt logs/runs/crossview_cpu/checkpoints/last.ckpt --data data/crossview
    python -m croco.eval.localisation --ckpt logs/runs/crossview_cpu/checkpoints/last.ckpt --data data/crossview --masked
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from croco.data.transforms import normalize
from croco.models.blocks import CrossAttention
from croco.utils.files import atomic_output
from croco.utils.sizes import as_hw

__all__ = ["LocalisationResult", "attention_position_error", "main", "measure_localisation", "record_cross_attention"]

def cross_attention_probabilities(
    module: CrossAttention, query: torch.Tensor, memory: torch.Tensor, qpos: torch.Tensor | None,
    kpos: torch.Tensor | None,
) -> torch.Tensor:  # fmt: skip
    """(B, heads, N, M): the softmax attention of ``module`` for these inputs, as its forward computes it."""
    q, k = module._heads(module.projq(query)), module._heads(module.projk(memory))
    if module.rope is not None:
        q, k = module.rope(q, qpos), module.rope(k, kpos)
    return ((q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(dim=-1)


@contextmanager
def record_cross_attention(net: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of a ``CrossAttention`` of ``net`` appends its attention probabilities
    (B, heads, N, M) to the yielded list, in call order (decoder block 0 first)."""
    maps: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        names = ("query", "memory", "qpos", "kpos")
        values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
        with torch.no_grad():
            maps.append(cross_attention_probabilities(module, values["query"], values["memory"],
                                                      values.get("qpos"), values.get("kpos")))  # fmt: skip

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in net.modules() if isinstance(m, CrossAttention)]
    if not handles:
        raise ValueError(f"{type(net).__name__} has no cross-attention (a CatBlock decoder or an encoder only)")
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def token_positions(grid: tuple[int, int]) -> torch.Tensor:
    """(H * W, 2): the (x, y) patch coordinates of a row-major token grid."""
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1).float()


def attention_position_error(
    attention: torch.Tensor, shifts: torch.Tensor, grid: tuple[int, int], tokens: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per head: (error of the attention-weighted position, error of the token's own position, sharpness).

    ``attention`` (B, heads, N, N) over a ``grid`` of tokens in both images; ``shifts`` (B, 2) the (x, y) patch
    offset of image 2's window, so image-1 token ``p`` matches image-2 token ``p - shift``. Errors are mean
    distances in patches over the tokens whose match lies inside image 2 (and, with ``tokens`` (B, N) bool, that
    are among those); each output is (heads,)."""
    positions = token_positions(grid).to(attention.device)
    truth = positions[None] - shifts[:, None].to(attention.device).float()  # (B, N, 2)
    inside = ((truth >= 0) & (truth <= torch.tensor([grid[1] - 1, grid[0] - 1], device=truth.device))).all(-1)
    if tokens is not None:
        inside = inside & tokens.to(inside.device)
    if not inside.any():
        raise ValueError("no measured image-1 token has its match inside image 2: shift smaller than the window")
    expected = attention.float() @ positions  # (B, heads, N, 2)
    error = (expected - truth[:, None]).norm(dim=-1)  # (B, heads, N)
    weights = inside[:, None].float().expand_as(error)
    own = (positions[None] - truth).norm(dim=-1)[inside].mean()
    sharpness = (attention.float().amax(dim=-1) * weights).sum(dim=(0, 2)) / weights.sum(dim=(0, 2))
    return (error * weights).sum(dim=(0, 2)) / weights.sum(dim=(0, 2)), own.expand(attention.shape[1]), sharpness


@dataclass
class LocalisationResult:
    """Per decoder block (rows) and head (columns): attention-weighted position error, own-position error (the
    reference) and sharpness; ``pairs`` measured."""

    error: torch.Tensor
    own_position_error: torch.Tensor
    sharpness: torch.Tensor
    pairs: int

    def table(self) -> str:
        header = "| decoder block | position error (patches), mean of heads | best head | own position | sharpness |"
        lines = [header, "|---|---|---|---|---|"]
        for b in range(self.error.shape[0]):
            lines.append(f"| {b} | {self.error[b].mean():.2f} | {self.error[b].min():.2f} | "
                         f"{self.own_position_error[b].mean():.2f} | {self.sharpness[b].mean():.2f} |")  # fmt: skip
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """Per decoder block: the mean over heads and the best head, as plain numbers (JSON)."""
        return {
            "pairs": self.pairs,
            "error_mean_of_heads": self.error.mean(dim=1).tolist(),
            "error_best_head": self.error.min(dim=1).values.tolist(),
            "own_position_error": self.own_position_error.mean(dim=1).tolist(),
            "sharpness": self.sharpness.mean(dim=1).tolist(),
        }


def shifted_windows(
    views: torch.Tensor, window: tuple[int, int], patch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image 1, image 2, shifts (B, 2) in patches) from views (B, 3, H, W) of at least ``window + 2 * patch``:
    image 1 the centred window, image 2 the window moved by -1, 0 or +1 patch along each axis."""
    height, width = views.shape[-2:]
    if height < window[0] + 2 * patch or width < window[1] + 2 * patch:
        raise ValueError(f"views of {height}x{width} are too small for a {window[0]}x{window[1]} window shifted "
                         f"by one {patch}-pixel patch (need {window[0] + 2 * patch}x{window[1] + 2 * patch})")  # fmt: skip
    top, left = (height - window[0]) // 2, (width - window[1]) // 2
    shifts = torch.randint(-1, 2, (views.shape[0], 2), generator=generator)
    img1 = views[..., top : top + window[0], left : left + window[1]]
    img2 = torch.stack([
        v[:, top + int(dy) * patch : top + int(dy) * patch + window[0], left + int(dx) * patch : left + int(dx) * patch + window[1]]
        for v, (dx, dy) in zip(views, shifts.tolist())
    ])  # fmt: skip
    return img1, img2, shifts


@torch.no_grad()
def measure_localisation(
    net: nn.Module, views: torch.Tensor, *, seed: int = 0, batch_size: int = 32, masked: bool = False
) -> LocalisationResult:
    """Probe ``net`` (a ``CroCoNet`` with a cross-attention decoder) on normalised views (B, 3, H, W) at least
    one patch larger than its image size on every side. ``masked``: the pretraining pass (image 1 masked at the
    network's ratio, masks drawn from ``seed``), measured over the masked tokens."""
    window = as_hw(net.croco_kwargs["img_size"], "img_size")
    patch = int(net.croco_kwargs["patch_size"])
    grid = (window[0] // patch, window[1] // patch)
    generator = torch.Generator().manual_seed(seed)
    sums: torch.Tensor | None = None
    was_training = net.training
    net.eval()
    try:
        for start in range(0, views.shape[0], batch_size):
            img1, img2, shifts = shifted_windows(views[start : start + batch_size], window, patch, generator)
            tokens = None
            with record_cross_attention(net) as maps:
                if masked:
                    masks = net.mask_generator(img1.shape[0], grid[0] * grid[1], img1.device, generator=generator)
                    _, tokens, _ = net(img1, img2, masks)
                else:
                    net.binocular_features(img1, img2, return_all_blocks=False)
            rows = torch.stack([torch.stack(attention_position_error(m, shifts, grid, tokens)) for m in maps], dim=1)
            sums = rows * img1.shape[0] if sums is None else sums + rows * img1.shape[0]
    finally:
        net.train(was_training)
    assert sums is not None
    mean = sums / views.shape[0]
    return LocalisationResult(mean[0], mean[1], mean[2], views.shape[0])


def load_views(folder: str | Path, count: int, size: tuple[int, int]) -> torch.Tensor:
    """The first image of ``count`` pairs spread over the shards of ``folder``, resized to ``size`` (bilinear)
    and ImageNet-normalised: (count, 3, H, W)."""
    from croco.data.shards import ShardReader, list_shards

    readers = [ShardReader(path) for path in list_shards(folder)]
    rows = [(reader, i) for reader in readers for i in range(len(reader))]
    if not rows:
        raise ValueError(f"{folder}: the shards hold no pairs")
    picks = torch.linspace(0, len(rows) - 1, min(count, len(rows))).round().long().tolist()
    images = []
    for index in picks:
        reader, row = rows[index]
        image = torch.as_tensor(reader.read(row, fields=("image1",))["image1"])
        images.append(image.permute(2, 0, 1).float().div(255)[None])
    for reader in readers:
        reader.close()
    return normalize(F.interpolate(torch.cat(images), size=size, mode="bilinear", align_corners=False, antialias=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m croco.eval.localisation", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint of a PretrainTask, or an official .pth")
    parser.add_argument("--data", required=True, help="shard folder whose first views are probed")
    parser.add_argument("--pairs", type=int, default=64, help="views probed (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shifts")
    parser.add_argument("--masked", action="store_true",
                        help="the pretraining pass: mask image 1 at the network's ratio, measure the masked tokens")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    try:
        from croco.eval.crossview import load_network

        net = load_network(args.ckpt).net
        window = as_hw(net.croco_kwargs["img_size"], "img_size")
        patch = int(net.croco_kwargs["patch_size"])
        views = load_views(args.data, args.pairs, (window[0] + 2 * patch, window[1] + 2 * patch))
        result = measure_localisation(net, views, seed=args.seed, masked=args.masked)
    except (ValueError, OSError) as error:  # CheckpointError and ShardError are one-line ValueErrors
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    tokens = "masked tokens of image 1" if args.masked else "image 1 unmasked"
    print(f"{args.ckpt} on {result.pairs} views of {args.data} (image 2 = image 1 shifted by -1, 0 or +1 patch; "
          f"{tokens}):")
    print(result.table())
    if args.out is not None:
        payload = {"checkpoint": str(args.ckpt), "data": str(args.data), "seed": args.seed, "masked": args.masked,
                   **result.to_dict()}
        with atomic_output(args.out) as tmp:
            Path(tmp).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
