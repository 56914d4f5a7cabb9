"""Relative camera pose from a CroCo binocular network: rotation utilities, a regression head and its loss.

Conventions: rotations are (..., 3, 3) matrices acting on column vectors; quaternions are (w, x, y, z) (scalar
first); angles are returned in DEGREES. The 6D representation is that of Zhou, Barnes, Lu, Yang & Li, "On the
Continuity of Rotation Representations in Neural Networks" (CVPR 2019): the first two COLUMNS of the matrix,
``x = (R[:, 0], R[:, 1])``, mapped back by Gram-Schmidt (:func:`rotation_6d_to_matrix`). The identity is
``[1, 0, 0, 0, 1, 0]``.

:class:`RelativePoseHead` plugs into ``croco.models.downstream.CroCoDownstreamBinocular`` like the DPT head
(``setup(net)``, ``forward(features, image_size, image2)``, ``return_all_blocks``, ``needs_image2``): it takes the
last (normalised) decoder output, the image-1 tokens after cross-attending image 2, finds where each token's match
lies among the image-2 encoder tokens (a learned soft-argmax), maps each token with its position and its matches'
offsets, mean-pools them and regresses rotation parameters and a translation, as one (B, P + 3) tensor (P = 6 for
"6d", 4 for "quat"); :func:`split_pose` turns it into (R (B, 3, 3), unit translation (B, 3)). Two images fix the translation up to scale, so only its direction is
supervised (:class:`PoseLoss`) and evaluated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from croco.utils.sizes import as_hw

__all__ = [
    "POSE_PARAMS",
    "PoseLoss",
    "RelativePoseHead",
    "geodesic_angle",
    "matrix_to_quaternion",
    "matrix_to_rotation_6d",
    "quaternion_to_matrix",
    "rotation_6d_to_matrix",
    "rotation_vector",
    "split_pose",
    "translation_angle",
]

POSE_PARAMS: dict[str, int] = {"6d": 6, "quat": 4}
"""Rotation parametrisations of :class:`RelativePoseHead` and their sizes."""

_EPS = 1e-8


def rotation_6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3): Gram-Schmidt on the two 3-vectors ``a1 = x[..., :3]``, ``a2 = x[..., 3:]``
    (Zhou et al. 2019): ``b1 = a1 / |a1|``, ``b2`` = the normalised part of ``a2`` orthogonal to ``b1``,
    ``b3 = b1 x b2``, and ``R = [b1 b2 b3]`` (columns)."""
    if x.shape[-1] != 6:
        raise ValueError(f"expected (..., 6) rotation parameters, got {tuple(x.shape)}")
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1, eps=_EPS)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=_EPS)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): the first two columns (the inverse of :func:`rotation_6d_to_matrix` on
    rotations)."""
    _check_matrix(matrix)
    return torch.cat([matrix[..., :, 0], matrix[..., :, 1]], dim=-1)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z), normalised here (any non-zero scale) -> (..., 3, 3) rotations."""
    if q.shape[-1] != 4:
        raise ValueError(f"expected (..., 4) quaternions (w, x, y, z), got {tuple(q.shape)}")
    w, x, y, z = F.normalize(q, dim=-1, eps=_EPS).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions (w, x, y, z) with ``w >= 0``.

    Shepperd's method: of the four algebraically equal formulas, each divides by one of ``4w^2, 4x^2, 4y^2,
    4z^2`` (from the diagonal); the one with the largest divisor is taken, so the result stays accurate for
    every rotation (the trace-only formula loses precision near 180 degrees)."""
    _check_matrix(matrix)
    m = matrix
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2)
    sq4 = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )
    # row k: 4 * q_k * (w, x, y, z)
    cand = torch.stack([
        torch.stack([sq4[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, sq4[..., 1], m01 + m10, m02 + m20], -1),
        torch.stack([m02 - m20, m01 + m10, sq4[..., 2], m12 + m21], -1),
        torch.stack([m10 - m01, m02 + m20, m12 + m21, sq4[..., 3]], -1),
    ], -2)  # fmt: skip
    best = sq4.argmax(dim=-1)
    q = torch.gather(cand, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = F.normalize(q, dim=-1, eps=_EPS)
    return torch.where(q[..., :1] < 0, -q, q)


def rotation_vector(rotation: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3): axis times angle, in degrees (the angle in [0, 180])."""
    q = matrix_to_quaternion(rotation.double())  # w >= 0: the angle in [0, 180]
    sin_half = q[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, q[..., :1])
    return torch.rad2deg(angle) * q[..., 1:] / sin_half.clamp_min(1e-12)


def geodesic_angle(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """The angle of the rotation ``r1^T r2`` taking ``r1`` to ``r2``, in degrees in [0, 180]; (...,).

    ``atan2(sin, cos)`` with ``cos = (trace - 1) / 2`` and ``sin`` = half the norm of the skew-symmetric part:
    the same value as ``acos`` of the clamped cosine, but accurate near 0 and 180 degrees (where ``acos`` of a
    float32 cosine is off by up to ~0.02 degrees) and never NaN, for slightly non-orthonormal inputs too."""
    _check_matrix(r1)
    _check_matrix(r2)
    rel = r1.transpose(-1, -2) @ r2
    cos = (rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    skew = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0],
                        rel[..., 1, 0] - rel[..., 0, 1]], -1)  # fmt: skip
    sin = _safe_norm(skew) / 2
    return torch.rad2deg(torch.atan2(sin, cos))


def translation_angle(t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """The angle between the directions of (..., 3) vectors ``t1`` and ``t2``, in degrees in [0, 180]; opposite
    directions give 180 (a pose direction, not a line). ``atan2(|t1 x t2|, t1 . t2)``, scale-free; 0 when either
    vector is zero (undefined direction: leave pure rotations out of translation metrics)."""
    if t1.shape[-1] != 3 or t2.shape[-1] != 3:
        raise ValueError(f"expected (..., 3) translations, got {tuple(t1.shape)} and {tuple(t2.shape)}")
    cross = _safe_norm(torch.linalg.cross(t1, t2, dim=-1))
    return torch.rad2deg(torch.atan2(cross, (t1 * t2).sum(-1)))


def _safe_norm(v: torch.Tensor) -> torch.Tensor:
    """L2 norm over the last axis whose gradient at 0 is 0 rather than NaN."""
    sq = v.square().sum(-1)
    zero = sq == 0
    return torch.where(zero, torch.zeros_like(sq), torch.where(zero, torch.ones_like(sq), sq).sqrt())


def _check_matrix(m: torch.Tensor) -> None:
    if m.ndim < 2 or m.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) rotation matrices, got {tuple(m.shape)}")


def split_pose(output: torch.Tensor, param: str = "6d") -> tuple[torch.Tensor, torch.Tensor]:
    """(R (B, 3, 3), unit translation (B, 3)) from a :class:`RelativePoseHead` output (B, P + 3)."""
    size = _param_size(param)
    if output.ndim != 2 or output.shape[-1] != size + 3:
        raise ValueError(f"expected a (B, {size + 3}) pose for param={param!r}, got {tuple(output.shape)}")
    rot, t = output[:, :size].float(), output[:, size:].float()
    matrix = rotation_6d_to_matrix(rot) if param == "6d" else quaternion_to_matrix(rot)
    return matrix, F.normalize(t, dim=-1, eps=_EPS)


def _param_size(param: str) -> int:
    if param not in POSE_PARAMS:
        raise ValueError(f"unknown rotation parametrisation {param!r}; allowed: {', '.join(POSE_PARAMS)}")
    return POSE_PARAMS[param]


class RelativePoseHead(nn.Module):
    """Soft correspondences from the decoder tokens, each with its image position, mean-pooled, then an MLP.

    Why correspondences: a relative pose is a function of where each point of image 1 lies in image 2 (the
    eight-point algorithm weighs every correspondence by its coordinates). With RoPE the tokens carry no absolute
    position: a decoder token of image 1 holds *what* its match in image 2 looks like (cross-attention copies
    image-2 content), not *where* that match is. So the head looks it up: for each token ``f_i`` at normalised
    patch centre ``p_i = (x_i, y_i)`` in [-1, 1] and each of ``match_heads`` learned similarities,
    ``a_ij = softmax_j(<W_q LN(f_i), W_k LN(e_j)> / sqrt(match_dim))`` over the image-2 encoder tokens ``e_j`` at
    ``q_j``, and the expected match position is ``m_i = sum_j a_ij q_j`` (a soft-argmax). Each token gives
    ``h_i = GELU(Linear([LN(f_i), p_i, m_i^1 - p_i, ..., m_i^H - p_i]))``; the pose is
    ``Linear(GELU(Linear(mean_i h_i)))``. Without the lookup (a mean of the tokens and their positions) the
    CPU-sized networks stay at the identity rotation (docs/downstream.md, "Relative pose").

    Output (B, P + 3): rotation parameters (6D, Zhou et al. 2019, or a quaternion (w, x, y, z)), then the
    translation (unnormalised); :func:`split_pose` reads it. Initialisation: the rotation rows of the last layer
    are zero with bias ``[1, 0, 0, 0, 1, 0]`` (6d) or ``[1, 0, 0, 0]`` (quat), so the initial rotation is exactly
    the identity for every input; the translation rows are ``trunc_normal(std=0.02)`` with zero bias, a small
    translation whose direction is defined (an exactly zero vector would make the direction loss singular).
    """

    return_all_blocks = False  # the network hands over the last decoder output (B, N, D) only
    needs_image2 = True  # ... and the image-2 encoder output (B, N2, enc_embed_dim)

    def __init__(self, param: str = "6d", hidden: int = 256, match_heads: int = 4, match_dim: int = 64):
        super().__init__()
        self.param = param
        self.rot_size = _param_size(param)
        self.hidden, self.match_heads, self.match_dim = int(hidden), int(match_heads), int(match_dim)
        if self.match_heads < 1 or self.match_dim < 1:
            raise ValueError(f"match_heads={match_heads}, match_dim={match_dim}: expected integers >= 1")
        self.patch_size: tuple[int, int] | None = None
        self.norm: nn.LayerNorm | None = None
        self.norm_image2: nn.LayerNorm | None = None
        self.query: nn.Linear | None = None
        self.key: nn.Linear | None = None
        self.token_mlp: nn.Sequential | None = None
        self.mlp: nn.Sequential | None = None

    def setup(self, net: nn.Module) -> None:
        if not hasattr(net, "dec_blocks"):
            raise ValueError("RelativePoseHead needs a network with a decoder (CroCoDownstreamBinocular)")
        dim, enc_dim = int(net.croco_kwargs["dec_embed_dim"]), int(net.croco_kwargs["enc_embed_dim"])
        last = nn.Linear(self.hidden, self.rot_size + 3)
        with torch.no_grad():
            last.weight.zero_()
            nn.init.trunc_normal_(last.weight[self.rot_size :], std=0.02)
            identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0] if self.param == "6d" else [1.0, 0.0, 0.0, 0.0]
            last.bias.copy_(torch.tensor(identity + [0.0, 0.0, 0.0]))
        self.patch_size = as_hw(net.croco_kwargs["patch_size"], "patch_size")
        self.norm, self.norm_image2 = nn.LayerNorm(dim), nn.LayerNorm(enc_dim)
        self.query = _linear(dim, self.match_heads * self.match_dim)
        self.key = _linear(enc_dim, self.match_heads * self.match_dim)
        self.token_mlp = nn.Sequential(_linear(dim + 2 + 2 * self.match_heads, self.hidden), nn.GELU())
        self.mlp = nn.Sequential(_linear(self.hidden, self.hidden), nn.GELU(), last)

    def forward(self, tokens: torch.Tensor, image_size: tuple[int, int], image2: torch.Tensor) -> torch.Tensor:
        """``tokens``: the last decoder output (B, N, D) of an ``image_size`` image 1; ``image2``: the image-2
        encoder output (B, N, enc_embed_dim), an image of the same size."""
        normed, matches, positions = self.matches(tokens, image_size, image2)
        batch, count = tokens.shape[:2]
        offsets = (matches - positions).permute(0, 2, 1, 3).reshape(batch, count, -1)  # (B, N, 2H)
        features = torch.cat([normed, positions.expand(batch, -1, -1), offsets], dim=-1)
        return self.mlp(self.token_mlp(features).mean(dim=1))

    def matches(
        self, tokens: torch.Tensor, image_size: tuple[int, int], image2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalised tokens, expected match positions in image 2 (B, H, N, 2), patch centres (1, N, 2)); the
        positions are normalised (x, y) in [-1, 1]."""
        if self.mlp is None:
            raise RuntimeError("RelativePoseHead.setup() must be called before forward")
        if tokens.ndim != 3:
            raise ValueError(f"expected the last decoder tokens (B, N, D), got {tuple(tokens.shape)}")
        grid = (image_size[0] // self.patch_size[0], image_size[1] // self.patch_size[1])
        if grid[0] * grid[1] != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} tokens do not tile a {tuple(image_size)} image in "
                             f"{self.patch_size} patches")  # fmt: skip
        if image2.shape[:2] != tokens.shape[:2]:
            raise ValueError(f"image-2 tokens {tuple(image2.shape)} do not match image-1 tokens "
                             f"{tuple(tokens.shape)}: relative pose needs two images of the same size")  # fmt: skip
        batch, count = tokens.shape[:2]
        positions = patch_centres(grid, tokens.device, tokens.dtype)  # both images: same size
        normed = self.norm(tokens)
        query = self.query(normed).view(batch, count, self.match_heads, self.match_dim).transpose(1, 2)
        key = self.key(self.norm_image2(image2)).view(batch, count, self.match_heads, self.match_dim).transpose(1, 2)
        weights = (query @ key.transpose(-1, -2) * self.match_dim**-0.5).softmax(dim=-1)  # (B, H, N, N)
        return normed, weights @ positions, positions

    def extra_repr(self) -> str:
        return f"param={self.param!r}, hidden={self.hidden}, match_heads={self.match_heads}, match_dim={self.match_dim}"


def patch_centres(grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, H * W, 2): the (x, y) centres of a row-major grid of patches, normalised to [-1, 1] over the image."""
    ys = (torch.arange(grid[0], device=device, dtype=dtype) + 0.5) / grid[0] * 2 - 1
    xs = (torch.arange(grid[1], device=device, dtype=dtype) + 0.5) / grid[1] * 2 - 1
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y], dim=-1).reshape(1, -1, 2)


def _linear(fan_in: int, fan_out: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    nn.init.trunc_normal_(layer.weight, std=0.02)
    nn.init.zeros_(layer.bias)
    return layer


class PoseLoss(nn.Module):
    """``rot_weight * mean ||R_pred - R_gt||_F^2 + trans_weight * mean (1 - cos(t_pred, t_gt))``.

    Rotation: the squared Frobenius (chordal) distance, ``4 (1 - cos theta) = 8 sin^2(theta / 2)`` for a
    relative angle ``theta``: increasing in ``theta`` over [0, 180] degrees, smooth, with a bounded gradient
    (the angle itself has an infinite ``acos`` gradient at 0). Translation: one minus the cosine similarity of
    the directions (the scale is unobservable from two images); ``t_pred`` need not be normalised.
    ``forward(R_pred (B, 3, 3), t_pred (B, 3), R_gt, t_gt)`` -> scalar; :meth:`terms` gives the two means.
    """

    def __init__(self, rot_weight: float = 1.0, trans_weight: float = 1.0):
        super().__init__()
        self.rot_weight, self.trans_weight = float(rot_weight), float(trans_weight)

    def terms(
        self, r_pred: torch.Tensor, t_pred: torch.Tensor, r_gt: torch.Tensor, t_gt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_matrix(r_pred)
        if r_pred.shape != r_gt.shape or t_pred.shape != t_gt.shape or t_pred.shape[-1] != 3:
            raise ValueError(f"pose shapes do not match: R {tuple(r_pred.shape)} vs {tuple(r_gt.shape)}, "
                             f"t {tuple(t_pred.shape)} vs {tuple(t_gt.shape)}")  # fmt: skip
        rot = (r_pred.float() - r_gt.float()).square().sum(dim=(-2, -1)).mean()
        trans = (1 - F.cosine_similarity(t_pred.float(), t_gt.float(), dim=-1, eps=_EPS)).mean()
        return rot, trans

    def forward(
        self, r_pred: torch.Tensor, t_pred: torch.Tensor, r_gt: torch.Tensor, t_gt: torch.Tensor
    ) -> torch.Tensor:
        rot, trans = self.terms(r_pred, t_pred, r_gt, t_gt)
        return self.rot_weight * rot + self.trans_weight * trans

    def extra_repr(self) -> str:
        return f"rot_weight={self.rot_weight}, trans_weight={self.trans_weight}"
