"""Stereo / flow / pose datasets, the official augmentations and the binocular DataModule.

The synthetic datasets read real shards of the embedded generator (6 pairs at 48 px, written once per module);
the benchmark layouts are tiny trees written by ``tests.data.stereoflow_fixtures``. The augmentation tests use
images whose colours are linear in the pixel coordinates, so that after any rescale / flip / crop the ground
truth can be checked to still map every ``img1`` pixel onto the matching ``img2`` pixel.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from croco.data.index import is_val_scene
from croco.data.shards import ShardReader, ShardWriter
from croco.data.stereoflow import (
    FlyingChairs,
    KittiFlow,
    KittiStereo,
    Middlebury,
    SceneFlowStereo,
    SintelFlow,
    SyntheticFlow,
    SyntheticPose,
    SyntheticStereo,
)
from croco.data.stereoflow_transforms import (
    EvalTransform,
    FlowAugmentor,
    PoseAugmentor,
    StereoAugmentor,
    warp_right_image,
)
from croco.data.transforms import denormalize, normalize
from tests.data.conftest import make_record
from tests.data.stereoflow_fixtures import (
    disparity_map,
    flow_map,
    tagged_image,
    write_flyingchairs,
    write_kitti,
    write_middlebury,
    write_sceneflow,
    write_sintel,
)

SEEDS = range(12)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    """Generator shards: ``stereo`` and ``flow`` folders of 6 pairs (2 scenes) at 48x48."""
    from croco.synth.pipeline import generate_pairs

    root = tmp_path_factory.mktemp("binocular")
    folders = {}
    for task in ("stereo", "flow"):
        folders[task] = root / task
        generate_pairs(
            folders[task], pairs=6, task=task, resolution=48, pairs_per_scene=3, workers=0, progress=False
        )
    return folders


def scene_threshold(scene: str) -> float:
    """The val_fraction above which ``scene`` is held out (bisection on ``is_val_scene``)."""
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (low, middle) if is_val_scene(scene, middle) else (middle, high)
    return high


def splitting_fraction(folder: Path) -> float:
    """A val_fraction that puts some scenes of ``folder`` in each split."""
    scenes = sorted({s for path in sorted(folder.glob("*.h5")) for s in ShardReader(path).scene})
    thresholds = sorted(scene_threshold(s) for s in scenes)
    assert len(thresholds) >= 2 and thresholds[0] < thresholds[-1]
    return (thresholds[0] + thresholds[1]) / 2


def sample_at(image: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of a (C, H, W) image at pixel positions x, y (H, W)."""
    height, width = image.shape[1:]
    grid = torch.stack([(x + 0.5) / width * 2 - 1, (y + 0.5) / height * 2 - 1], dim=-1)
    return F.grid_sample(image[None].float(), grid[None].float(), align_corners=False)[0]


def pixel_grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    return xs, ys


def one_line(error: pytest.ExceptionInfo, *parts: object) -> str:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, message
    return message


# --------------------------------------------------------------------------------------------- synthetic


def test_synthetic_stereo_raw_sample_follows_the_contract(synthetic):
    dataset = SyntheticStereo(synthetic["stereo"], "train", val_fraction=0.0)
    assert len(dataset) == 6 and dataset.targets == ("stereo",)
    reader = ShardReader(min(synthetic["stereo"].glob("*.h5")))
    for i in range(3):
        sample = dataset.raw(i)
        assert sample["img1"].dtype == torch.uint8 and sample["img1"].shape == (3, 48, 48)
        disparity = sample["disparity"]
        assert disparity.dtype == torch.float32 and disparity.shape == (1, 48, 48)
        stored = reader.read(i, fields=("disparity", "disparity_valid"))
        valid = torch.from_numpy(stored["disparity_valid"])
        assert torch.equal(torch.isfinite(disparity[0]), valid)
        assert torch.all(disparity[0][valid] > 0) and torch.all(torch.isposinf(disparity[0][~valid]))
        # the left pixel (x, y) shows what the right image shows at (x - d, y)
        xs, ys = pixel_grid(48, 48)
        d = torch.where(valid, disparity[0], torch.zeros(()))
        aligned = (sample_at(sample["img2"], xs - d, ys) - sample["img1"].float()).abs().mean(0)[valid].mean()
        wrong_way = (
            (sample_at(sample["img2"], xs + d, ys) - sample["img1"].float()).abs().mean(0)[valid].mean()
        )
        assert aligned < 0.5 * wrong_way
        assert sample["name"].startswith(reader.scene[i] + "/")


def test_synthetic_flow_raw_sample_follows_the_contract(synthetic):
    dataset = SyntheticFlow(synthetic["flow"], "val", val_fraction=0.999)
    assert len(dataset) == 6
    errors = []
    for i in range(3):
        sample = dataset.raw(i)
        flow = sample["flow"]
        assert flow.dtype == torch.float32 and flow.shape == (2, 48, 48)
        valid = torch.isfinite(flow).all(0)
        assert torch.equal(torch.isinf(flow[0]), ~valid) and torch.equal(torch.isinf(flow[1]), ~valid)
        assert 0 < valid.sum() < valid.numel()
        xs, ys = pixel_grid(48, 48)
        u, v = (torch.where(valid, c, torch.zeros(())) for c in flow)
        aligned = (sample_at(sample["img2"], xs + u, ys + v) - sample["img1"].float()).abs().mean(0)[valid]
        wrong_way = (sample_at(sample["img2"], xs - u, ys - v) - sample["img1"].float()).abs().mean(0)[valid]
        errors.append((aligned.mean(), wrong_way.mean()))
    assert sum(a for a, _ in errors) < 0.5 * sum(w for _, w in errors)


def test_synthetic_split_by_scene(synthetic):
    fraction = splitting_fraction(synthetic["stereo"])
    train = SyntheticStereo(synthetic["stereo"], "train", val_fraction=fraction)
    val = SyntheticStereo(synthetic["stereo"], "val", val_fraction=fraction)
    test = SyntheticStereo(synthetic["stereo"], "test", val_fraction=fraction)
    assert len(train) > 0 and len(val) > 0 and len(train) + len(val) == 6
    assert not set(train.scenes) & set(val.scenes)
    assert [test.raw(i)["name"] for i in range(len(test))] == [val.raw(i)["name"] for i in range(len(val))]
    with pytest.raises(ValueError, match="split='dev'"):
        SyntheticStereo(synthetic["stereo"], "dev")


def test_synthetic_pose_is_camera_2_in_camera_1(synthetic):
    for task in ("stereo", "flow"):
        dataset = SyntheticPose(synthetic[task], "train", val_fraction=0.0)
        assert len(dataset) == 6 and dataset.dropped == 0
        reader = ShardReader(min(synthetic[task].glob("*.h5")))
        for i in range(2):
            sample = dataset.raw(i)
            poses = reader.read(i, fields=("pose1", "pose2"))
            relative = np.linalg.inv(poses["pose1"]) @ poses["pose2"]
            assert sample["rotation"].dtype == torch.float32 and sample["rotation"].shape == (3, 3)
            np.testing.assert_allclose(sample["rotation"].numpy(), relative[:3, :3], atol=1e-6)
            norm = np.linalg.norm(relative[:3, 3])
            np.testing.assert_allclose(sample["translation"].numpy(), relative[:3, 3] / norm, atol=1e-6)
            assert sample["translation_norm"].shape == () and float(
                sample["translation_norm"]
            ) == pytest.approx(norm)
            if task == "stereo":  # rectified: same orientation, the right camera along the left camera's +x
                np.testing.assert_allclose(sample["rotation"].numpy(), np.eye(3), atol=1e-5)
                np.testing.assert_allclose(sample["translation"].numpy(), [1, 0, 0], atol=1e-5)


def test_synthetic_pose_drops_pairs_without_translation(tmp_path):
    rng = np.random.default_rng(0)
    with ShardWriter(tmp_path / "pairs" / "shard-00000.h5", source="test", resolution=(16, 16)) as writer:
        for i in range(4):
            record = make_record(rng, size=16, scene="room")
            if i % 2:
                record.pose2 = record.pose1.copy()
                record.pose2[:3, :3] = np.eye(3)  # rotation only: no translation direction
                record.pose2[:3, 3] = record.pose1[:3, 3]
            writer.add(record)
    dataset = SyntheticPose(tmp_path / "pairs", "train", val_fraction=0.0)
    assert len(dataset) == 2 and dataset.dropped == 2
    assert all(np.linalg.norm(dataset.raw(i)["translation"].numpy()) == pytest.approx(1.0) for i in range(2))


def test_synthetic_errors_name_the_shard_and_the_generator_task(synthetic, tmp_path):
    with pytest.raises(ValueError) as error:
        SyntheticStereo(synthetic["flow"], "train")
    one_line(error, "shard-00000.h5", "disparity", "task=stereo")
    with pytest.raises(ValueError) as error:
        SyntheticFlow(synthetic["stereo"], "train")
    one_line(error, "shard-00000.h5", "task=flow")
    with pytest.raises(ValueError) as error:
        SyntheticPose(tmp_path / "nowhere", "train")
    one_line(error, tmp_path / "nowhere", "generate.py")


# ---------------------------------------------------------------------------------------- benchmark layouts


def test_middlebury_scenes_splits_and_ground_truth(tmp_path):
    root = write_middlebury(tmp_path / "md", ["Adirondack-perfect", "Umbrella-imperfect", "Zen-perfect"])
    train = Middlebury(root, "train")
    val = Middlebury(root, "val")
    assert train.scenes == ["Adirondack-perfect", "Zen-perfect"] and val.scenes == ["Umbrella-imperfect"]
    assert [Middlebury(root, "test").raw(0)["name"]] == ["Umbrella-imperfect"]
    sample = train.raw(1)
    assert sample["name"] == "Zen-perfect"
    assert torch.equal(sample["img1"], torch.from_numpy(tagged_image(4)).permute(2, 0, 1))
    assert torch.equal(sample["img2"], torch.from_numpy(tagged_image(5)).permute(2, 0, 1))
    expected = disparity_map(2)
    assert torch.all(torch.isposinf(sample["disparity"][0, 0]))  # inf in the PFM
    np.testing.assert_array_equal(sample["disparity"][0, 1:].numpy(), expected[1:])
    # without the official validation scenes: the last two scenes are held out
    other = write_middlebury(tmp_path / "md21", ["a", "b", "c", "d"])
    assert Middlebury(other, "val").scenes == ["c", "d"] and Middlebury(other, "train").scenes == ["a", "b"]


def test_middlebury_errors_name_the_missing_file(tmp_path):
    with pytest.raises(ValueError) as error:
        Middlebury(tmp_path / "none", "train")
    one_line(error, tmp_path / "none", "im0.png")
    root = write_middlebury(tmp_path / "md", ["a", "b", "c"])
    (root / "a" / "disp0.pfm").unlink()
    with pytest.raises(ValueError) as error:
        Middlebury(root, "train")
    one_line(error, root / "a" / "disp0.pfm", "file not found")


@pytest.mark.parametrize("year", [2012, 2015])
def test_kitti_stereo_layout_and_sparse_ground_truth(tmp_path, year):
    root = write_kitti(tmp_path / "kitti", year, frames=3)
    train = KittiStereo(root, "train", year=year, val_frames=1)
    val = KittiStereo(root, "val", year=year, val_frames=1)
    assert len(train) == 2 and len(val) == 1
    assert val.raw(0)["name"] == f"kitti{year}/000002"
    sample = train.raw(1)
    assert int(sample["img1"][2, 0, 0]) == 3 and int(sample["img2"][2, 0, 0]) == 5  # left _10, right _10
    disparity = sample["disparity"][0]
    assert torch.all(torch.isposinf(disparity[0])) and torch.isfinite(disparity[1:]).all()
    np.testing.assert_array_equal(disparity[1:].numpy(), disparity_map(1)[1:])
    assert len(KittiStereo(root, "train", year=year)) == 0  # 3 frames < the official 5 held out


@pytest.mark.parametrize("year", [2012, 2015])
def test_kitti_flow_layout_and_sparse_ground_truth(tmp_path, year):
    root = write_kitti(tmp_path / "kitti", year, frames=3)
    train = KittiFlow(root, "train", year=year, val_frames=1)
    assert len(train) == 2 and len(KittiFlow(root, "test", year=year, val_frames=1)) == 1
    sample = train.raw(1)
    assert int(sample["img1"][2, 0, 0]) == 3 and int(sample["img2"][2, 0, 0]) == 4  # _10 -> _11
    flow = sample["flow"]
    assert flow.shape == (2, 12, 16) and torch.all(torch.isposinf(flow[:, 0]))
    np.testing.assert_array_equal(flow[:, 1:].numpy(), flow_map(1)[1:].transpose(2, 0, 1))


def test_kitti_errors(tmp_path):
    with pytest.raises(ValueError) as error:
        KittiStereo(tmp_path / "none", "train")
    one_line(error, tmp_path / "none" / "training", "image_2", "disp_occ_0")
    root = write_kitti(tmp_path / "kitti", 2015, frames=2)
    (root / "training" / "flow_occ" / "000000_10.png").unlink()
    with pytest.raises(ValueError) as error:
        KittiFlow(root, "train", val_frames=0)
    one_line(error, root / "training" / "flow_occ" / "000000_10.png")
    with pytest.raises(ValueError, match="year=2013"):
        KittiStereo(root, "train", year=2013)


def test_sceneflow_passes_and_splits(tmp_path):
    root = write_sceneflow(tmp_path / "ft3d", {"TRAIN": 2, "TEST": 3})
    train = SceneFlowStereo(root, "train")
    assert len(train) == 2 and len(SceneFlowStereo(root, "test")) == 3
    assert len(SceneFlowStereo(root, "val")) == 1  # every 100th TEST frame
    assert len(SceneFlowStereo(root, "train", pass_="all")) == 4
    sample = train.raw(1)
    assert sample["name"] == "cleanpass/TRAIN/A/0000/left/0007"
    assert int(sample["img1"][2, 0, 0]) == 10 and int(sample["img2"][2, 0, 0]) == 15
    np.testing.assert_array_equal(sample["disparity"][0].numpy(), disparity_map(1) + 1)
    final = SceneFlowStereo(root, "train", pass_="final").raw(0)
    assert int(final["img1"][2, 0, 0]) == 1
    with pytest.raises(ValueError) as error:
        SceneFlowStereo(tmp_path / "none", "train")
    one_line(error, "frames_cleanpass", "FlyingThings3D")
    with pytest.raises(ValueError, match="pass_='dirty'"):
        SceneFlowStereo(root, "train", pass_="dirty")


def test_sintel_consecutive_frames_and_held_out_scenes(tmp_path):
    root = write_sintel(tmp_path / "sintel", {"alley_1": 3, "temple_2": 2})
    train = SintelFlow(root, "train")
    val = SintelFlow(root, "val")
    assert [train.raw(i)["name"] for i in range(len(train))] == [
        "clean/alley_1/frame_0001",
        "clean/alley_1/frame_0002",
    ]
    assert [val.raw(0)["name"]] == ["clean/temple_2/frame_0001"] and len(val) == 1
    sample = train.raw(1)
    assert int(sample["img1"][2, 0, 0]) == 2 and int(sample["img2"][2, 0, 0]) == 3
    np.testing.assert_array_equal(sample["flow"].numpy(), flow_map(2).transpose(2, 0, 1))
    assert len(SintelFlow(root, "train", pass_="all")) == 4
    (root / "training" / "flow" / "alley_1" / "frame_0001.flo").unlink()
    with pytest.raises(ValueError) as error:
        SintelFlow(root, "train")
    one_line(error, root / "training" / "flow" / "alley_1" / "frame_0001.flo", "MPI-Sintel")


def test_flyingchairs_split_file(tmp_path):
    root = write_flyingchairs(tmp_path / "chairs", [1, 2, 1])
    train = FlyingChairs(root, "train")
    assert [train.raw(i)["name"] for i in range(len(train))] == ["00001", "00003"]
    assert [FlyingChairs(root, "val").raw(0)["name"]] == ["00002"]
    sample = train.raw(1)
    assert int(sample["img1"][2, 0, 0]) == 6 and int(sample["img2"][2, 0, 0]) == 7
    np.testing.assert_array_equal(sample["flow"].numpy(), flow_map(3).transpose(2, 0, 1))
    other = write_flyingchairs(tmp_path / "official", [2, 1], split_file="chairs_split.txt")
    assert len(FlyingChairs(other, "train")) == 1
    (root / "FlyingChairs_train_val.txt").write_text("1\n3\n")
    with pytest.raises(ValueError) as error:
        FlyingChairs(root, "train")
    one_line(error, "FlyingChairs_train_val.txt", "line 2")
    (root / "FlyingChairs_train_val.txt").unlink()
    with pytest.raises(ValueError) as error:
        FlyingChairs(root, "train")
    one_line(error, root / "FlyingChairs_train_val.txt", "1 = train")


def test_mismatched_sizes_are_an_error_naming_the_file(tmp_path):
    root = write_flyingchairs(tmp_path / "chairs", [1])
    from tests.data.stereoflow_fixtures import save_image

    save_image(root / "data" / "00001_img2.ppm", tagged_image(0, 10, 16))
    with pytest.raises(ValueError) as error:
        FlyingChairs(root, "train").raw(0)
    one_line(error, root / "data" / "00001_img2.ppm", "(10, 16)")


# --------------------------------------------------------------------------------------------- augmentations


def stereo_ramp(disparity: float = 6.0, height: int = 40, width: int = 96) -> dict:
    """Float images with red = x, green = y (linear) and img2[y, x] = img1[y, x + d]; even rows invalid."""
    xs, ys = pixel_grid(height, width)
    half = torch.full_like(xs, 0.5)
    img1 = torch.stack([(xs + 0.5) / 128, (ys + 0.5) / 64, half])
    img2 = torch.stack([(xs + disparity + 0.5) / 128, (ys + 0.5) / 64, half])
    gt = torch.full((1, height, width), disparity)
    gt[:, ::2] = torch.inf
    return {"img1": img1, "img2": img2, "disparity": gt, "name": "ramp"}


def images(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return denormalize(sample["img1"][None])[0], denormalize(sample["img2"][None])[0]


def test_stereo_augmentor_keeps_disparity_aligned_and_scaled():
    augment = StereoAugmentor((24, 40), scale_prob=1.0, right_jitter_prob=0.0, color=False)
    scales, flips = [], 0
    for seed in SEEDS:
        torch.manual_seed(seed)
        out = augment(stereo_ramp(6.0))
        img1, img2 = images(out)
        disparity = out["disparity"][0]
        assert (
            out["img1"].shape == (3, 24, 40)
            and disparity.shape == (24, 40)
            and disparity.dtype == torch.float32
        )
        # inf stays inf: whole rows, exactly the source's even rows (green names the source row)
        invalid_rows = torch.isinf(disparity).all(1)
        assert torch.equal(invalid_rows | torch.isfinite(disparity).all(1), torch.ones(24, dtype=torch.bool))
        source_rows = torch.round(img1[1].mean(1) * 64 - 0.5).long()
        assert torch.equal(invalid_rows, source_rows % 2 == 0)
        flips += int(source_rows[0] > source_rows[-1])
        # the disparity is multiplied by the horizontal scale of the images (red slope = 1 / (128 s))
        scale = 1 / (128 * (img1[0, :, 30] - img1[0, :, 5]).mean() / 25)
        finite = disparity[torch.isfinite(disparity)]
        assert torch.allclose(finite, finite[0]) and float(finite[0]) / 6.0 == pytest.approx(
            float(scale), rel=2e-3
        )
        assert 1.0 <= float(scale) <= 2.0 + 1e-3
        scales.append(float(scale))
        # img1[y, x] == img2[y, x - disparity] wherever both are inside the crop
        xs, ys = pixel_grid(24, 40)
        d = torch.where(torch.isfinite(disparity), disparity, torch.zeros(()))
        inside = torch.isfinite(disparity) & (xs - d >= 1) & (xs >= 1) & (xs <= 38)
        matched = sample_at(img2, xs - d, ys)
        assert (matched - img1).abs().amax(0)[inside].max() < 1e-3
    assert len({round(s, 3) for s in scales}) > 5 and 0 < flips < len(SEEDS)


def test_stereo_augmentor_upscales_narrow_images_and_keeps_high_resolution_range():
    augment = StereoAugmentor((24, 90), scale_prob=0.0, right_jitter_prob=0.0, v_flip_prob=0.0, color=False)
    torch.manual_seed(0)
    out = augment(stereo_ramp(4.0, width=64))  # 64 < 90 + 8: always upscaled to 98
    finite = out["disparity"][torch.isfinite(out["disparity"])]
    assert float(finite[0]) == pytest.approx(4.0 * 98 / 64)
    with pytest.raises(ValueError) as error:
        StereoAugmentor((48, 40))(stereo_ramp(height=40))
    one_line(error, "ramp", "height 40")
    high = StereoAugmentor((24, 40), low_res_threshold=10, scale_prob=1.0, right_jitter_prob=0.0, color=False)
    for seed in range(5):
        torch.manual_seed(seed)
        finite = high(stereo_ramp(6.0))["disparity"]
        ratio = float(finite[torch.isfinite(finite)][0]) / 6.0
        assert 2**-0.2 - 0.02 <= ratio <= 2**0.4 + 0.02


def test_stereo_colour_and_right_jitter_leave_the_ground_truth_alone():
    plain = StereoAugmentor((24, 40), color=False)
    full = StereoAugmentor((24, 40))
    for seed in SEEDS:
        torch.manual_seed(seed)
        reference = plain(stereo_ramp())
        torch.manual_seed(seed)
        out = full(stereo_ramp())
        assert torch.equal(out["disparity"], reference["disparity"])
        assert torch.isfinite(out["img1"]).all() and torch.isfinite(out["img2"]).all()
    torch.manual_seed(3)
    first = full(stereo_ramp())
    torch.manual_seed(3)
    assert torch.equal(full(stereo_ramp())["img2"], first["img2"])  # reproducible under torch.manual_seed


def test_right_image_jitter_is_a_small_rotation_and_vertical_shift():
    image = stereo_ramp()["img1"]
    shifted = warp_right_image(image, 0.0, (10.0, 10.0), 2.0)
    assert torch.allclose(shifted[:, 2:], image[:, :-2], atol=1e-6) and shifted[:, :2].abs().max() < 1e-5
    rotated = warp_right_image(image, 0.1, (48.0, 20.0), 0.0)
    assert (rotated - image)[:, 1:-1, 1:-1].abs().max() < 48 * np.radians(
        0.1
    ) / 64 + 1e-4  # < 0.1 deg of motion


def flow_ramp(
    u: float = 5.0, v: float = -3.0, height: int = 64, width: int = 96, invalid: float = 0.0
) -> dict:
    """Linear colour ramps with img2(x + u, y + v) = img1(x, y); a share ``invalid`` of the pixels is +inf."""
    xs, ys = pixel_grid(height, width)
    half = torch.full_like(xs, 0.5)
    img1 = torch.stack([(xs + 20) / 160, (ys + 20) / 160, half])
    img2 = torch.stack([(xs - u + 20) / 160, (ys - v + 20) / 160, half])
    flow = torch.stack([torch.full_like(xs, u), torch.full_like(xs, v)])
    if invalid:
        mask = torch.rand(height, width, generator=torch.Generator().manual_seed(0)) < invalid
        flow[:, mask] = torch.inf
    return {"img1": img1, "img2": img2, "flow": flow, "name": "ramp"}


def check_flow_alignment(out: dict) -> tuple[float, float]:
    """Every valid img1 pixel lands on the same colour in img2; returns the image scales (x, y)."""
    img1, img2 = images(out)
    flow = out["flow"]
    height, width = flow.shape[1:]
    xs, ys = pixel_grid(height, width)
    valid = torch.isfinite(flow).all(0)
    assert torch.equal(torch.isinf(flow).any(0), ~valid)
    u, v = (torch.where(valid, c, torch.zeros(())) for c in flow)
    inside = valid & (xs + u >= 1) & (xs + u <= width - 2) & (ys + v >= 1) & (ys + v <= height - 2)
    inside &= (xs >= 1) & (xs <= width - 2) & (ys >= 1) & (ys <= height - 2)
    assert inside.sum() > 0.2 * valid.sum()
    assert (sample_at(img2, xs + u, ys + v) - img1).abs().amax(0)[inside].max() < 1e-3
    scale_x = float((img1[0, :, -2] - img1[0, :, 1]).mean().abs() * 160 / (width - 3))
    scale_y = float((img1[1, -2, :] - img1[1, 1, :]).mean().abs() * 160 / (height - 3))
    return 1 / scale_x, 1 / scale_y


@pytest.mark.parametrize("invalid", [0.0, 0.3])
def test_flow_augmentor_keeps_flow_aligned_and_scaled(invalid):
    augment = FlowAugmentor((32, 48), spatial_aug_prob=1.0, v_flip_prob=0.5, color=False)
    h_flips = v_flips = 0
    for seed in SEEDS:
        torch.manual_seed(seed)
        out = augment(flow_ramp(invalid=invalid))
        assert out["img1"].shape == (3, 32, 48) and out["flow"].shape == (2, 32, 48)
        scale_x, scale_y = check_flow_alignment(out)
        flow = out["flow"]
        finite = torch.isfinite(flow).all(0)
        assert bool(finite.all()) == (invalid == 0)
        u, v = flow[0][finite], flow[1][finite]
        assert torch.allclose(u.abs(), torch.full_like(u, 5.0 * scale_x), rtol=2e-3)
        assert torch.allclose(v.abs(), torch.full_like(v, 3.0 * scale_y), rtol=2e-3)
        h_flips += int(u[0] < 0)
        v_flips += int(v[0] > 0)
    assert 0 < h_flips < len(SEEDS) and 0 < v_flips < len(SEEDS)


def test_flipped_flow_negates_the_flipped_component():
    sample = flow_ramp()
    reference = sample["flow"]
    h_only = FlowAugmentor((64, 96), spatial_aug_prob=0.0, h_flip_prob=1.0, v_flip_prob=0.0, color=False)
    out = h_only(flow_ramp())
    assert torch.equal(out["flow"][0], -reference[0].flip(-1)) and torch.equal(out["flow"][1], reference[1])
    assert torch.allclose(out["img1"], normalize(sample["img1"].flip(-1)[None])[0], atol=1e-6)
    v_only = FlowAugmentor((64, 96), spatial_aug_prob=0.0, h_flip_prob=0.0, v_flip_prob=1.0, color=False)
    out = v_only(flow_ramp())
    assert torch.equal(out["flow"][1], -reference[1].flip(-2)) and torch.equal(out["flow"][0], reference[0])
    check_flow_alignment(out)


def test_flow_colour_leaves_the_ground_truth_alone_and_small_images_are_upscaled():
    plain = FlowAugmentor((32, 48), color=False)
    full = FlowAugmentor((32, 48))
    for seed in SEEDS:
        torch.manual_seed(seed)
        reference = plain(flow_ramp(invalid=0.2))
        torch.manual_seed(seed)
        out = full(flow_ramp(invalid=0.2))
        assert torch.equal(torch.isinf(out["flow"]), torch.isinf(reference["flow"]))
        assert torch.equal(out["flow"].nan_to_num(posinf=0), reference["flow"].nan_to_num(posinf=0))
    small = FlowAugmentor((48, 72), spatial_aug_prob=0.0, color=False)
    out = small(flow_ramp(height=40, width=60))
    assert out["img1"].shape == (3, 48, 72)
    check_flow_alignment(out)


def test_pose_augmentor_crops_both_images_alike_and_keeps_the_pose():
    rotation, translation = torch.eye(3), torch.tensor([0.0, 0.6, 0.8])
    ramp = stereo_ramp()["img1"]
    sample = {
        "img1": ramp,
        "img2": ramp.clone(),
        "rotation": rotation,
        "translation": translation,
        "name": "p",
    }
    augment = PoseAugmentor((24, 40), color=False, h_flip_prob=0.0, swap_prob=0.0)
    tops = set()
    for seed in range(6):
        torch.manual_seed(seed)
        out = augment(dict(sample))
        assert torch.equal(out["img1"], out["img2"]) and out["img1"].shape == (3, 24, 40)
        assert torch.equal(out["rotation"], rotation) and torch.equal(out["translation"], translation)
        tops.add(round(float(images(out)[0][1, 0, 0]) * 64 - 0.5))
    assert len(tops) > 1
    torch.manual_seed(0)
    assert PoseAugmentor(64)(dict(sample))["img1"].shape == (3, 64, 64)  # smaller images are upscaled


def _pose_of(out: dict) -> np.ndarray:
    """The camera-to-world pose of camera 2 when camera 1 is the world frame, from a sample's pose labels."""
    pose = np.eye(4)
    pose[:3, :3] = out["rotation"].double().numpy()
    pose[:3, 3] = (out["translation"] * out["translation_norm"]).double().numpy()  # the unit direction, scaled
    return pose


def test_pose_augmentor_flip_and_swap_give_the_exact_pose_of_the_new_views():
    """A flipped pair is the view of a mirrored world: the flow that the new pose predicts from the flipped depth
    is the flipped flow (u negated). Swapped views carry the pose of camera 1 in camera 2's frame."""
    from croco.data.stereoflow import pose_sample
    from croco.geometry.cameras import intrinsics_from_hfov
    from croco.geometry.covisibility import optical_flow

    size, rng = 32, np.random.default_rng(0)
    K = intrinsics_from_hfov(70.0, size)
    pose1, pose2 = np.eye(4), np.eye(4)
    axis = rng.normal(size=3)
    angle = np.deg2rad(25.0) * axis / np.linalg.norm(axis)
    skew = np.array([[0, -angle[2], angle[1]], [angle[2], 0, -angle[0]], [-angle[1], angle[0], 0]])
    pose2[:3, :3] = torch.linalg.matrix_exp(torch.from_numpy(skew)).numpy()
    pose2[:3, 3] = [0.7, -0.2, 0.3]
    depth = (3.0 + rng.uniform(0, 1, (size, size))).astype(np.float32)
    sample = {"img1": torch.rand(3, size, size), "img2": torch.rand(3, size, size), "name": "p",
              **pose_sample(pose1, pose2)}  # fmt: skip
    flow, _ = optical_flow(depth, depth, K, K, pose1, pose2)

    flipped = PoseAugmentor(size, color=False, h_flip_prob=1.0, swap_prob=0.0)(dict(sample))
    assert torch.allclose(images(flipped)[0], sample["img1"].flip(-1), atol=1e-6)
    flow_flipped, _ = optical_flow(depth[:, ::-1].copy(), depth, K, K, np.eye(4), _pose_of(flipped))
    mirrored = flow[:, ::-1] * np.array([-1.0, 1.0], dtype=np.float32)
    assert np.abs(flow_flipped - mirrored).max() < 1e-3 and np.abs(mirrored).max() > 2  # a real motion
    rotation = flipped["rotation"].double()
    assert torch.allclose(rotation @ rotation.T, torch.eye(3, dtype=torch.float64), atol=1e-6)
    assert torch.linalg.det(rotation) == pytest.approx(1.0, abs=1e-6)

    swapped = PoseAugmentor(size, color=False, h_flip_prob=0.0, swap_prob=1.0)(dict(sample))
    expected = pose_sample(pose2, pose1)
    assert torch.allclose(images(swapped)[0], sample["img2"], atol=1e-6)
    assert torch.allclose(images(swapped)[1], sample["img1"], atol=1e-6)
    torch.testing.assert_close(swapped["rotation"], expected["rotation"])
    torch.testing.assert_close(swapped["translation"], expected["translation"])

    seen = set()
    for seed in SEEDS:  # both changes happen at their default probability, never to the images alone
        torch.manual_seed(seed)
        out = PoseAugmentor(size, color=False)(dict(sample))
        mirror = not torch.allclose(images(out)[0], sample["img1"], atol=1e-6) and not torch.allclose(
            images(out)[0], sample["img2"], atol=1e-6)
        swap = torch.allclose(images(out)[1], sample["img1"], atol=1e-6) or torch.allclose(
            images(out)[1], sample["img1"].flip(-1), atol=1e-6)
        seen.add((mirror, swap))
        reference = PoseAugmentor(size, color=False, h_flip_prob=float(mirror), swap_prob=float(swap))(dict(sample))
        torch.testing.assert_close(out["rotation"], reference["rotation"])
        torch.testing.assert_close(out["translation"], reference["translation"])
    assert len(seen) == 4


def test_eval_transform_centre_crops_images_and_ground_truth():
    sample = stereo_ramp()
    out = EvalTransform((20, 30))(sample)
    assert out["img1"].shape == (3, 20, 30) and out["disparity"].shape == (1, 20, 30)
    assert torch.equal(out["disparity"], sample["disparity"][:, 10:30, 33:63])
    assert torch.allclose(images(out)[0], sample["img1"][:, 10:30, 33:63], atol=1e-6)
    full = EvalTransform(None)(flow_ramp())
    assert full["img1"].shape == (3, 64, 96) and full["img1"].dtype == torch.float32
    with pytest.raises(ValueError) as error:
        EvalTransform(100)(sample)
    one_line(error, "ramp", "larger")


def test_augmentors_on_synthetic_pairs_keep_the_correspondence(synthetic):
    """The generator's ground truth still maps img1 onto img2 after the geometric augmentation."""
    stereo = SyntheticStereo(synthetic["stereo"], "train", val_fraction=0.0)
    flow = SyntheticFlow(synthetic["flow"], "train", val_fraction=0.0)
    stereo.transform = StereoAugmentor(32, right_jitter_prob=0.0, color=False)
    flow.transform = FlowAugmentor(32, color=False)
    aligned = wrong = 0.0
    for seed in range(6):
        torch.manual_seed(seed)
        for sample, is_stereo in ((stereo[seed], True), (flow[seed], False)):
            img1, img2 = images(sample)
            gt = sample["disparity" if is_stereo else "flow"]
            valid = torch.isfinite(gt).all(0)
            gt = torch.where(torch.isfinite(gt), gt, torch.zeros(()))
            u, v = (-gt[0], torch.zeros_like(gt[0])) if is_stereo else (gt[0], gt[1])
            height, width = img1.shape[1:]
            xs, ys = pixel_grid(height, width)
            inside = valid.clone()
            for sign in (1, -1):  # both the right and the wrong correspondence stay in the crop
                inside &= (xs + sign * u >= 0) & (xs + sign * u <= width - 1)
                inside &= (ys + sign * v >= 0) & (ys + sign * v <= height - 1)
            if inside.sum() < 50:
                continue
            aligned += float((sample_at(img2, xs + u, ys + v) - img1).abs().mean(0)[inside].mean())
            wrong += float((sample_at(img2, xs - u, ys - v) - img1).abs().mean(0)[inside].mean())
    assert 0 < aligned < 0.3 * wrong


# --------------------------------------------------------------------------------------------- DataModule


def test_datamodule_synthetic_batches_for_every_target(synthetic):
    from croco.data.binocular import BinocularDataModule

    fraction = splitting_fraction(synthetic["stereo"])
    for target, folder in (("stereo", "stereo"), ("flow", "flow"), ("pose", "stereo")):
        module = BinocularDataModule(
            "synthetic", synthetic[folder], target, crop_size=[32, 40], batch_size=2, num_workers=0,
            val_fraction=fraction, val_crop_size=40,
        )  # fmt: skip
        module.prepare_data()
        module.setup("fit")
        batch = next(iter(module.train_dataloader()))
        assert batch["img1"].shape == (2, 3, 32, 40) and batch["img2"].dtype == torch.float32
        assert isinstance(batch["name"], list) and isinstance(batch["name"][0], str)
        if target == "stereo":
            assert batch["disparity"].shape == (2, 1, 32, 40)
        elif target == "flow":
            assert batch["flow"].shape == (2, 2, 32, 40)
        else:
            assert batch["rotation"].shape == (2, 3, 3) and batch["translation"].shape == (2, 3)
            assert batch["translation_norm"].shape == (2,)
        val = next(iter(module.val_dataloader()))
        assert val["img1"].shape[-2:] == (40, 40)
    module = BinocularDataModule(
        "synthetic", synthetic["flow"], "flow", 32, num_workers=0, val_fraction=fraction
    )
    module.setup("test")
    assert next(iter(module.test_dataloader()))["flow"].shape[-2:] == (
        48,
        48,
    )  # full images without val_crop_size
    limited = BinocularDataModule(
        "synthetic", synthetic["flow"], "flow", 32, num_workers=0, val_fraction=0.999, limit_val_samples=2
    )
    limited.setup("validate")
    assert len(limited.data_val) == 2


def test_datamodule_generates_missing_shards_once(synthetic, tmp_path):
    from croco.data.binocular import BinocularDataModule

    calls = []

    def generate(folder: Path) -> None:
        calls.append(folder)
        shutil.copytree(synthetic["stereo"], folder, dirs_exist_ok=True)

    root = tmp_path / "empty"
    module = BinocularDataModule("synthetic", root, "stereo", 32, num_workers=0, generate_if_missing=generate,
                                 val_fraction=0.0)  # fmt: skip
    module.prepare_data()
    module.prepare_data()
    assert calls == [root]
    module.setup("fit")
    assert len(module.data_train) == 6


def test_datamodule_mixes_sources_with_repeats(synthetic, tmp_path):
    from croco.data.binocular import BinocularDataModule

    kitti = write_kitti(tmp_path / "kitti", 2015, frames=3, size=(40, 64))
    sources = [
        {"name": "synthetic", "root": str(synthetic["stereo"]), "repeat": 3},
        {"name": "kitti2015", "root": str(kitti), "val_frames": 1},
    ]
    module = BinocularDataModule(sources, None, "stereo", 32, batch_size=4, num_workers=0, val_fraction=0.0)
    module.setup("fit")
    assert len(module.data_train) == 3 * 6 + 2
    assert len(module.data_val) == 0 + 1
    batch = next(iter(module.train_dataloader()))
    assert batch["disparity"].shape == (4, 1, 32, 32)
    assert module.source == ["synthetic", "kitti2015"]


def test_datamodule_rejects_bad_combinations(synthetic):
    from croco.data.binocular import BinocularDataModule, allowed_combinations

    assert "sintel/flow" in allowed_combinations() and "synthetic/pose" in allowed_combinations()
    with pytest.raises(ValueError) as error:
        BinocularDataModule("sintel", "/data/sintel", "stereo", 32)
    one_line(error, "sintel", "stereo", "sintel/flow", "kitti2015/stereo")
    with pytest.raises(ValueError, match="imagenet"):
        BinocularDataModule("imagenet", "/data", "stereo", 32)
    with pytest.raises(ValueError, match="depth"):
        BinocularDataModule("synthetic", "/data", "depth", 32)
    with pytest.raises(ValueError, match=r"repeat"):
        BinocularDataModule([{"name": "sintel", "root": "/s", "repeat": 0}], None, "flow", 32)
    with pytest.raises(ValueError, match="unknown option"):
        BinocularDataModule([{"name": "sintel", "root": "/s", "passes": "final"}], None, "flow", 32)
    with pytest.raises(ValueError, match="no root"):
        BinocularDataModule([{"name": "sintel"}], None, "flow", 32)
