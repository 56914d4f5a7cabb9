"""Relative pose: rotation representations (6D of Zhou et al. 2019, quaternions), angles, the head on a tiny
binocular network, and the loss."""

from __future__ import annotations

import math

import pytest
import torch

from croco.models.downstream import CroCoDownstreamBinocular
from croco.models.pose import (
    PoseLoss,
    RelativePoseHead,
    geodesic_angle,
    matrix_to_quaternion,
    matrix_to_rotation_6d,
    quaternion_to_matrix,
    rotation_6d_to_matrix,
    rotation_vector,
    split_pose,
    translation_angle,
)

TINY = {"img_size": 32, "patch_size": 8, "enc_embed_dim": 32, "enc_depth": 2, "enc_num_heads": 2,
        "dec_embed_dim": 32, "dec_depth": 2, "dec_num_heads": 2}  # fmt: skip


def _random_rotations(n: int) -> torch.Tensor:
    q = torch.randn(n, 4, dtype=torch.float64)
    return quaternion_to_matrix(q)


def _rot_z(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)  # fmt: skip


def test_quaternion_to_matrix_gives_rotations_and_the_known_formula():
    r = _random_rotations(64)
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(64, dtype=torch.float64))
    half = math.radians(90) / 2  # 90 degrees about z, unnormalised input
    q = torch.tensor([math.cos(half), 0.0, 0.0, math.sin(half)], dtype=torch.float64) * 3
    torch.testing.assert_close(quaternion_to_matrix(q), _rot_z(90))


def test_quaternion_round_trip_including_180_degree_rotations():
    r = _random_rotations(256)
    flips = torch.diag_embed(torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64))
    r = torch.cat([r, flips, _rot_z(180)[None], torch.eye(3, dtype=torch.float64)[None]])
    q = matrix_to_quaternion(r)
    assert torch.all(q[:, 0] >= 0)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(len(r), dtype=torch.float64))
    torch.testing.assert_close(quaternion_to_matrix(q), r)
    q0 = torch.randn(32, 4, dtype=torch.float64)
    q0 = q0 / q0.norm(dim=-1, keepdim=True) * q0[:, :1].sign()
    torch.testing.assert_close(matrix_to_quaternion(quaternion_to_matrix(q0)), q0)


def test_6d_round_trip_and_gram_schmidt():
    r = _random_rotations(128).reshape(2, 64, 3, 3)  # batched over any leading axes
    x = matrix_to_rotation_6d(r)
    assert x.shape == (2, 64, 6)
    torch.testing.assert_close(rotation_6d_to_matrix(x), r)
    torch.testing.assert_close(x[..., :3], r[..., :, 0])  # first two columns
    eye = rotation_6d_to_matrix(torch.tensor([2.0, 0, 0, 0.5, 3.0, 0]))  # scaled, non-orthogonal identity
    torch.testing.assert_close(eye, torch.eye(3))
    r = rotation_6d_to_matrix(torch.randn(100, 6, dtype=torch.float64))
    torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(100, 3, 3))
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(100, dtype=torch.float64))


def test_geodesic_angle_of_known_rotations():
    eye = torch.eye(3, dtype=torch.float64)
    assert geodesic_angle(eye, _rot_z(90)).item() == pytest.approx(90.0)
    assert geodesic_angle(_rot_z(30), _rot_z(-45)).item() == pytest.approx(75.0)
    assert geodesic_angle(eye, _rot_z(180)).item() == pytest.approx(180.0)
    assert geodesic_angle(eye, eye).item() == 0.0
    small = geodesic_angle(torch.eye(3), _rot_z(1e-3).float())  # float32: acos would give ~0.02 degrees
    assert small.item() == pytest.approx(1e-3, rel=1e-3)
    r = _random_rotations(16).float().requires_grad_(True)
    geodesic_angle(r, r.detach()).sum().backward()  # zero angle: finite gradient
    assert torch.isfinite(r.grad).all()


def test_translation_angle_uses_the_direction_sign():
    t = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0], [0.0, 0, 3]])
    u = torch.tensor([[5.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 1.0], [0.0, 0, 0]])
    torch.testing.assert_close(translation_angle(t, u), torch.tensor([0.0, 180.0, 45.0, 0.0]))


@pytest.mark.parametrize("param", ["6d", "quat"])
def test_head_outputs_the_identity_at_init(param):
    model = CroCoDownstreamBinocular(RelativePoseHead(param=param, hidden=16), **TINY).eval()
    img1, img2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(img1, img2)
    assert out.shape == (2, (6 if param == "6d" else 4) + 3)
    r, t = split_pose(out, param)
    torch.testing.assert_close(r, torch.eye(3).expand(2, 3, 3))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))
    raw_t = out[:, -3:]
    assert 0 < raw_t.norm(dim=-1).max() < 1.0  # small, with a defined direction


def test_head_trains_through_the_loss():
    model = CroCoDownstreamBinocular(RelativePoseHead(hidden=16), **TINY)
    out = model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    r, _ = split_pose(out)
    loss = PoseLoss()(r, out[:, 6:], _rot_z(90).float().expand(2, 3, 3), torch.tensor([[0.0, 0, 1]] * 2))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("head.")}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert (
        grads["head.mlp.2.bias"].abs().sum() > 0 and model.enc_blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    )


def test_head_sees_where_each_token_is():
    """Moving the same tokens to other image positions changes the pose (a plain mean pool would not)."""
    model = CroCoDownstreamBinocular(RelativePoseHead(hidden=16), **TINY)
    head = model.head
    with torch.no_grad():  # a non-trivial last layer (it starts at the identity for every input)
        torch.nn.init.normal_(head.mlp[-1].weight, std=0.5)
    grid = 32 // TINY["patch_size"]
    tokens = torch.randn(1, grid * grid, TINY["dec_embed_dim"])
    image2 = torch.randn(1, grid * grid, TINY["enc_embed_dim"])
    moved = tokens.flip(1)
    assert not torch.allclose(head(tokens, (32, 32), image2), head(moved, (32, 32), image2), atol=1e-6)
    assert not torch.allclose(head(tokens, (32, 32), image2), head(tokens, (32, 32), image2.flip(1)), atol=1e-6)
    with pytest.raises(ValueError, match="do not tile a"):
        head(tokens, (32, 48), image2)
    with pytest.raises(ValueError, match="two images of the same size"):
        head(tokens, (32, 32), image2[:, :-4])


def test_head_locates_each_match_in_image_2():
    """With query = key = a scaled identity, each token's soft match is the image-2 token equal to it: image 2
    shifted one patch to the left gives every match one patch to the left of the token (away from the border)."""
    model = CroCoDownstreamBinocular(RelativePoseHead(hidden=16, match_heads=1, match_dim=32), **TINY)
    head = model.head
    with torch.no_grad():
        for layer in (head.query, head.key):
            layer.weight.copy_(8.0 * torch.eye(32))
    grid = 32 // TINY["patch_size"]
    tokens = torch.randn(2, grid, grid, 32)
    image2 = tokens.roll(-1, dims=2)  # image-2 column c holds image-1 column c + 1
    _, matches, positions = head.matches(tokens.flatten(1, 2), (32, 32), image2.flatten(1, 2))
    shift = (matches - positions)[:, 0].view(2, grid, grid, 2)
    interior = shift[:, :, 1:]  # column 0's match wrapped around to the last column
    torch.testing.assert_close(interior[..., 0], torch.full_like(interior[..., 0], -2 / grid), atol=1e-3, rtol=0)
    torch.testing.assert_close(interior[..., 1], torch.zeros_like(interior[..., 1]), atol=1e-3, rtol=0)


def test_pose_loss_values():
    eye = torch.eye(3).expand(2, 3, 3)
    r_gt = torch.stack([_rot_z(90).float(), torch.eye(3)])
    t_pred, t_gt = torch.tensor([[1.0, 0, 0], [0, 3.0, 0]]), torch.tensor([[2.0, 0, 0], [0, 0, 1.0]])
    rot, trans = PoseLoss().terms(eye, t_pred, r_gt, t_gt)
    # ||R - I||_F^2 = 4 (1 - cos 90) = 4 for the first pair, 0 for the second; 1 - cos: 0 and 1
    assert rot.item() == pytest.approx(2.0) and trans.item() == pytest.approx(0.5)
    loss = PoseLoss(rot_weight=0.5, trans_weight=2.0)(eye, t_pred, r_gt, t_gt)
    assert loss.item() == pytest.approx(0.5 * 2.0 + 2.0 * 0.5)


def test_errors():
    with pytest.raises(ValueError, match="allowed: 6d, quat"):
        RelativePoseHead(param="euler")
    with pytest.raises(ValueError, match="expected a \\(B, 9\\)"):
        split_pose(torch.zeros(2, 7), "6d")


def test_rotation_vector_is_axis_times_angle():
    half = math.radians(30.0) / 2  # 30 degrees about y, then 120 about (1, 1, 1)
    about_y = quaternion_to_matrix(torch.tensor([math.cos(half), 0.0, math.sin(half), 0.0], dtype=torch.float64))
    torch.testing.assert_close(rotation_vector(about_y), torch.tensor([0.0, 30.0, 0.0], dtype=torch.float64))
    turn = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.float64)  # x -> y -> z -> x
    expected = torch.full((3,), 120.0 / math.sqrt(3), dtype=torch.float64)
    torch.testing.assert_close(rotation_vector(turn), expected)
    torch.testing.assert_close(rotation_vector(about_y.T), -rotation_vector(about_y))
