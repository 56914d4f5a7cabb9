"""Monocular downstream data: synthetic task shards, NYUv2, ADE20K, class folders, aligned transforms, DataModule."""

from __future__ import annotations

import logging
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from croco.data.dense import ADE20K, IGNORE_INDEX, ClassFolders, NYUv2, SyntheticViews
from croco.data.dense_transforms import DenseTransform, centre_box
from croco.data.downstream import SOURCES, DownstreamDataModule, allowed_combinations
from croco.data.index import is_val_scene
from croco.data.shards import ShardReader
from croco.data.transforms import denormalize
from tests.data.conftest import write_shard
from tests.data.dense_fixtures import (
    SURFACES,
    nyu_frame,
    write_ade,
    write_folders,
    write_nyu,
    write_task_shard,
)

VAL_FRACTION = 0.5  # 4 scenes in the generated fixture: both splits are non-empty
BARE = ("void", "floor", "wall", "ceiling")


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 pairs of the embedded generator with task=depth (4 scenes of 3 pairs, 48x48)."""
    from croco.synth.pipeline import generate_pairs

    folder = tmp_path_factory.mktemp("synthetic")
    generate_pairs(
        folder, pairs=12, task="depth", resolution=48, pairs_per_scene=3, workers=0, progress=False
    )
    return folder


@pytest.fixture
def nyu(tmp_path: Path) -> Path:
    return write_nyu(tmp_path / "nyu")


@pytest.fixture
def ade(tmp_path: Path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    annotation = np.zeros((24, 32), np.uint8)
    annotation[:, 8:16], annotation[:, 16:24], annotation[:, 24:] = 1, 150, 7
    write_ade(root, {"ADE_train_00000001": annotation, "ADE_train_00000002": annotation[:, ::-1]})
    write_ade(root, {"ADE_val_00000001": annotation[:20, :28]}, split="validation")
    return root


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    layout = {
        "train": {"dog": ["a.jpg", "b.JPEG"], "cat": ["c.png"], "ant": ["d.JPG", "notes.txt"]},
        "val": {"cat": ["e.jpeg"], "dog": ["f.png"]},
    }
    root = write_folders(tmp_path / "imagenet", layout)
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    return root


# --------------------------------------------------------------------------------------------- synthetic


def test_synthetic_samples_splits_and_targets(synthetic: Path) -> None:
    (shard,) = sorted(synthetic.glob("*.h5"))
    reader = ShardReader(shard)
    views = {}
    for split in ("train", "val"):
        data = SyntheticViews(synthetic, split, "depth", val_fraction=VAL_FRACTION)
        assert data.num_classes is None and data.class_names is None
        sample = data[0]
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 48, 48)
        assert sample["depth"].dtype == torch.float32 and sample["depth"].shape == (1, 48, 48)
        assert float(sample["depth"].max()) > 0
        views[split] = [data.raw(i)["name"] for i in range(len(data))]
    # two samples (view 1 and 2) per pair, every pair exactly once, splits disjoint by scene
    names = views["train"] + views["val"]
    assert len(names) == len(set(names)) == 2 * len(reader)
    assert Counter(n.rsplit("/", 1)[1] for n in names) == {"view1": len(reader), "view2": len(reader)}
    scenes = {split: {n.split("/")[0] for n in v} for split, v in views.items()}
    assert scenes["train"] and scenes["val"] and not scenes["train"] & scenes["val"]
    assert all(is_val_scene(s, VAL_FRACTION) for s in scenes["val"])
    assert SyntheticViews(synthetic, "test", "depth", val_fraction=VAL_FRACTION).index.tolist() == (
        SyntheticViews(synthetic, "val", "depth", val_fraction=VAL_FRACTION).index.tolist()
    )

    classes = reader.attrs["surface_classes"]
    seg = SyntheticViews(synthetic, "train", "segmentation", val_fraction=VAL_FRACTION)
    assert seg.class_names == classes and seg.num_classes == len(classes)
    for i in range(len(seg)):
        _, row, view = seg.index[i]
        raw = reader.read(int(row), fields=(f"semantics{view}",))[f"semantics{view}"].astype(np.int64)
        out = seg[i]["segmentation"]
        assert out.dtype == torch.int64 and out.shape == (48, 48)
        expected = np.where(raw == 0, IGNORE_INDEX, raw)
        np.testing.assert_array_equal(out.numpy(), expected)

    cls = SyntheticViews(synthetic, "val", "classification", val_fraction=VAL_FRACTION)
    non_bare = [name for name in classes if name not in BARE]
    assert cls.class_names == non_bare and cls.num_classes == len(non_bare)
    assert len(cls) + cls.dropped == len(views["val"])
    for i in range(len(cls)):
        _, row, view = cls.index[i]
        raw = reader.read(int(row), fields=(f"semantics{view}",))[f"semantics{view}"]
        counts = Counter(classes[c] for c in raw.ravel().tolist() if classes[c] not in BARE)
        top = max(counts.values())
        winner = min(classes.index(name) for name, n in counts.items() if n == top)  # ties: lowest id
        label = cls[i]["label"]
        assert label.dtype == torch.int64 and label.ndim == 0
        assert cls.class_names[int(label)] == classes[winner]


def test_synthetic_drops_bare_views_and_checks_fields(tmp_path: Path, caplog) -> None:
    full = np.zeros((16, 16), np.uint8)
    mixed = np.full((16, 16), SURFACES.index("wall"), np.uint8)
    mixed[:6] = SURFACES.index("lamp")
    mixed[6:12, :4] = SURFACES.index("table")
    bare = np.full((16, 16), SURFACES.index("floor"), np.uint8)
    bare[:3] = 0
    write_task_shard(tmp_path / "task" / "shard-00000.h5", [(mixed, bare), (bare, full)])
    with caplog.at_level(logging.INFO, logger="croco.data.dense"):
        data = SyntheticViews(tmp_path / "task", "train", "classification", val_fraction=0.0)
    assert (len(data), data.dropped) == (1, 3)
    assert data.class_names == ["table", "chair", "lamp"] and int(data[0]["label"]) == 2
    assert data[0]["name"] == "s0/shard-00000-00000/view1"
    assert sum("3 of 4 views" in r.getMessage() for r in caplog.records) == 1

    write_shard(tmp_path / "pretrain" / "shard-00000.h5", ["s0"], [0.5], size=16)
    with pytest.raises(ValueError, match="semantics1.*task=depth") as error:
        SyntheticViews(tmp_path / "pretrain", "train", "segmentation")
    assert "shard-00000.h5" in one_line(error)
    with pytest.raises(ValueError, match="depth1.*task=depth") as error:
        SyntheticViews(tmp_path / "pretrain", "train", "depth")
    one_line(error)
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ValueError, match=f"{folder.name}.*task=depth") as error:
            SyntheticViews(folder, "train", "depth")
        one_line(error)
    with pytest.raises(ValueError, match="target='normals'"):
        SyntheticViews(tmp_path / "task", "train", "normals")
    with pytest.raises(ValueError, match="split='training'"):
        SyntheticViews(tmp_path / "task", "training", "depth")


# --------------------------------------------------------------------------------------------- NYUv2


@pytest.mark.parametrize("splits_format", ["v5", "v73"])
def test_nyu_orientation_and_splits(tmp_path: Path, splits_format: str) -> None:
    root = write_nyu(tmp_path / "nyu", splits_format=splits_format)
    train, test = NYUv2(root, "train"), NYUv2(root, "test")
    assert (len(train), len(test), len(NYUv2(root, "val"))) == (3, 2, 2)
    assert train.num_classes is None and train.targets == ("depth",)
    for data, frames in ((train, (0, 2, 4)), (test, (1, 3))):
        for i, frame in enumerate(frames):
            sample = data[i]
            image, depth = nyu_frame(frame, 16, 20)
            assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 16, 20)
            assert sample["depth"].dtype == torch.float32 and sample["depth"].shape == (1, 16, 20)
            np.testing.assert_array_equal(sample["image"].numpy(), image)  # red grows along the width
            np.testing.assert_array_equal(sample["depth"][0].numpy(), depth)
            assert sample["name"] == f"nyu_{frame + 1:04d}"


def test_nyu_is_pickle_safe_and_errors_are_one_line(nyu: Path, tmp_path: Path) -> None:
    data = NYUv2(nyu, "train")
    first = data[0]["image"]  # opens the handle in this process
    clone = pickle.loads(pickle.dumps(data))
    assert clone._file is None and torch.equal(clone[0]["image"], first)

    with pytest.raises(ValueError, match="nyu_depth_v2_labeled.mat: file not found; download") as error:
        NYUv2(tmp_path / "nowhere", "train")
    one_line(error)
    (nyu / "splits.mat").unlink()
    with pytest.raises(ValueError, match="splits.mat: file not found") as error:
        NYUv2(nyu, "train")
    one_line(error)
    for skipped in ("images", "depths"):
        root = write_nyu(tmp_path / f"no-{skipped}", skip=skipped)
        with pytest.raises(ValueError, match=f"nyu_depth_v2_labeled.mat: no dataset '{skipped}'") as error:
            NYUv2(root, "test")
        one_line(error)
    bad_split = write_nyu(tmp_path / "bad-split", train=(1, 9))
    with pytest.raises(ValueError, match="trainNdxs holds index 9 outside 1..5"):
        NYUv2(bad_split, "train")


# --------------------------------------------------------------------------------------------- ADE20K


def test_ade20k_shifts_labels_and_reports_missing_annotations(ade: Path) -> None:
    train = ADE20K(ade, "train")
    assert len(train) == 2 and train.num_classes == 150 and len(train.class_names) == 150
    assert train.class_names[0] == "class_001"
    sample = train[0]
    assert sample["image"].shape == (3, 24, 32) and sample["image"].dtype == torch.uint8
    segmentation = sample["segmentation"]
    assert segmentation.dtype == torch.int64 and segmentation.shape == (24, 32)
    assert segmentation[0, :8].eq(IGNORE_INDEX).all()  # 0 = other -> ignored
    assert segmentation[0, 8:16].eq(0).all() and segmentation[0, 16:24].eq(149).all()
    assert segmentation[0, 24:].eq(6).all()
    assert sample["name"] == "ADE_train_00000001.jpg"
    assert ADE20K(ade, "val")[0]["segmentation"].shape == (20, 28)

    names = ["wall", "building, edifice", "sky"] + [f"thing{i}" for i in range(4, 151)]
    rows = "".join(f"{i}\t0.1\t10\t5\t{name}\n" for i, name in enumerate(names, start=1))
    (ade / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n" + rows)
    assert ADE20K(ade, "test").class_names[:3] == ["wall", "building", "sky"]

    (ade / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(ValueError, match="no annotation for 1 of 2 images.*ADE_train_00000002.png") as error:
        ADE20K(ade, "train")
    one_line(error)
    shutil.rmtree(ade / "images" / "validation")
    with pytest.raises(ValueError, match="validation: folder not found") as error:
        ADE20K(ade, "val")
    one_line(error)


# --------------------------------------------------------------------------------------------- class folders


def test_class_folders_labels_and_unknown_val_class(folders: Path) -> None:
    train = ClassFolders(folders, "train")
    assert train.class_names == ["ant", "cat", "dog"] and train.num_classes == 3
    labels = {train[i]["name"]: int(train[i]["label"]) for i in range(len(train))}
    assert labels == {"ant/d.JPG": 0, "cat/c.png": 1, "dog/a.jpg": 2, "dog/b.JPEG": 2}  # notes.txt skipped
    assert train[0]["label"].dtype == torch.int64 and train[0]["image"].shape == (3, 12, 16)
    val = ClassFolders(folders, "val")
    assert [int(val[i]["label"]) for i in range(len(val))] == [1, 2]

    write_folders(folders, {"val": {"zebra": ["z.png"]}})
    with pytest.raises(ValueError, match="class 'zebra' has no folder in") as error:
        ClassFolders(folders, "val")
    one_line(error)
    with pytest.raises(ValueError, match="train: folder not found") as error:
        ClassFolders(folders / "nothing", "train")
    one_line(error)


# --------------------------------------------------------------------------------------------- transforms


PALETTE = torch.tensor([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]])


def block_sample(height: int, width: int, block: int, seed: int = 0) -> dict:
    """A segmentation of random blocks and the image that paints each class in its palette colour."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, len(PALETTE), (height // block, width // block), generator=generator)
    segmentation = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)
    image = PALETTE[segmentation].permute(2, 0, 1).to(torch.uint8)
    return {"image": image, "segmentation": segmentation, "name": "blocks"}


def decode_classes(image: torch.Tensor) -> torch.Tensor:
    """The palette class nearest to each pixel of a normalised (3, H, W) image."""
    pixels = denormalize(image[None])[0].permute(1, 2, 0) * 255
    return torch.cdist(pixels.reshape(-1, 3), PALETTE.float()).argmin(1).reshape(pixels.shape[:2])


def test_crop_and_flip_keep_image_and_target_aligned() -> None:
    flips = 0
    for seed in range(12):
        sample = block_sample(64, 96, 16, seed)
        options = {"scale": (0.3, 1.0), "color_jitter": 0.0, "seed": seed}
        out = DenseTransform((32, 40), train=True, hflip=0.5, **options)(sample)
        segmentation = out["segmentation"]
        assert out["image"].shape == (3, 32, 40) and out["image"].dtype == torch.float32
        assert segmentation.shape == (32, 40) and segmentation.dtype == torch.int64
        # away from block edges (uniform 5x5 neighbourhood) the image colour names the target class
        padded = segmentation[None, None].float()
        high = torch.nn.functional.max_pool2d(padded, 5, 1, 2)[0, 0]
        low = -torch.nn.functional.max_pool2d(-padded, 5, 1, 2)[0, 0]
        interior = (high == low)[2:-2, 2:-2]
        assert interior.float().mean() > 0.3
        decoded = decode_classes(out["image"])[2:-2, 2:-2]
        assert torch.equal(decoded[interior], segmentation[2:-2, 2:-2][interior])
        # the pattern is asymmetric: an image flipped without its target would fail the check above
        unflipped = decode_classes(out["image"].flip(-1))[2:-2, 2:-2]
        assert not torch.equal(unflipped[interior], segmentation[2:-2, 2:-2][interior])
        # same draws without the flip (the flip is drawn last): was this sample flipped?
        plain = DenseTransform((32, 40), train=True, hflip=0.0, **options)(sample)["segmentation"]
        flipped = torch.equal(plain.flip(-1), segmentation)
        assert flipped or torch.equal(plain, segmentation)
        flips += flipped
    assert 0 < flips < 12  # both cases were exercised


def test_full_box_flip_and_eval_centre_crop_are_exact() -> None:
    sample = block_sample(32, 32, 4, seed=3)
    flip = DenseTransform(32, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0, color_jitter=0.0)
    out = flip(sample)
    assert torch.equal(out["segmentation"], sample["segmentation"].flip(-1))
    assert torch.equal(decode_classes(out["image"]), sample["segmentation"].flip(-1))

    wide = block_sample(60, 80, 5, seed=4)
    assert centre_box(60, 80, (30, 30)) == (0, 10, 60, 60)
    out = DenseTransform(30, train=False)(wide)
    # nearest at pixel centres: output pixel i <- input pixel 2 i + 1 of the centred 60x60 box
    assert torch.equal(out["segmentation"], wide["segmentation"][1::2, 11:70:2])
    again = DenseTransform(30, train=False)(wide)
    assert torch.equal(out["image"], again["image"])


def test_depth_is_never_blended_and_sizes_are_exact() -> None:
    generator = torch.Generator().manual_seed(0)
    depth = torch.rand(1, 45, 70, generator=generator) * 9 + 0.5
    depth[torch.rand(1, 45, 70, generator=generator) < 0.3] = 0.0  # invalid pixels
    image = torch.randint(0, 256, (3, 45, 70), dtype=torch.uint8, generator=generator)
    values = set(depth.unique().tolist())
    for size, train in (((24, 40), True), (17, True), ((50, 30), False), (64, False)):
        out = DenseTransform(size, train=train, seed=1)({"image": image, "depth": depth, "name": "d"})
        expected = size if isinstance(size, tuple) else (size, size)
        assert out["image"].shape == (3, *expected) and out["depth"].shape == (1, *expected)
        assert set(out["depth"].unique().tolist()) <= values
        assert (out["depth"] == 0).any()  # invalid pixels stay invalid, no half-valid blends
    label = torch.tensor(4)
    out = DenseTransform(16, train=True)({"image": image, "label": label, "name": "c"})
    assert out["label"] is label and out["image"].shape == (3, 16, 16)


def test_transform_randomness_is_seeded() -> None:
    sample = block_sample(48, 48, 8, seed=1)
    transform = DenseTransform(24, train=True)
    torch.manual_seed(5)
    first = transform(sample)
    torch.manual_seed(5)
    second = transform(sample)
    assert torch.equal(first["image"], second["image"])
    assert torch.equal(first["segmentation"], second["segmentation"])
    seeded = [DenseTransform(24, train=True, seed=7)(sample)["image"] for _ in range(2)]
    assert torch.equal(seeded[0], seeded[1])
    with pytest.raises(ValueError, match="uint8 \\(3, H, W\\)"):
        transform({"image": sample["image"].float(), "name": "x"})
    with pytest.raises(ValueError, match="segmentation of size"):
        transform({"image": sample["image"], "segmentation": sample["segmentation"][:5], "name": "x"})


# --------------------------------------------------------------------------------------------- DataModule


def check_batch(batch: dict, size: int, target: str, count: int) -> None:
    assert batch["image"].shape == (count, 3, size, size) and batch["image"].dtype == torch.float32
    assert len(batch["name"]) == count and isinstance(batch["name"][0], str)
    if target == "depth":
        assert batch["depth"].shape == (count, 1, size, size) and batch["depth"].dtype == torch.float32
    elif target == "segmentation":
        assert batch["segmentation"].shape == (count, size, size)
        assert batch["segmentation"].dtype == torch.int64
    else:
        assert batch["label"].shape == (count,) and batch["label"].dtype == torch.int64


@pytest.mark.parametrize("target", ["depth", "segmentation", "classification"])
def test_datamodule_synthetic(synthetic: Path, target: str) -> None:
    module = DownstreamDataModule(
        "synthetic", synthetic, target, 32, batch_size=4, num_workers=0, val_fraction=VAL_FRACTION,
        augment={"scale": [0.6, 1.0], "color_jitter": 0.2}, limit_val_samples=5,
    )  # fmt: skip
    described = module.describe()
    module.prepare_data()
    module.setup("fit")
    assert (module.num_classes, module.class_names) == (described["num_classes"], described["class_names"])
    train = module.train_dataloader()
    assert train.drop_last and len(train) == len(module.data_train) // 4
    check_batch(next(iter(train)), 32, target, 4)
    val = module.val_dataloader()
    assert len(module.data_val) == 5
    batches = list(val)
    check_batch(batches[0], 32, target, 4)
    check_batch(batches[1], 32, target, 1)
    module.setup("test")
    assert len(module.test_dataloader().dataset) == len(module._val_full)


def test_datamodule_other_sources(nyu: Path, ade: Path, folders: Path) -> None:
    for source, root, target in (("nyuv2", nyu, "depth"), ("ade20k", ade, "segmentation"),
                                 ("folders", folders, "classification")):  # fmt: skip
        module = DownstreamDataModule(source, root, target, 16, batch_size=8, num_workers=0)
        module.setup("fit")
        train = module.train_dataloader()
        assert not train.drop_last  # fewer samples than one batch: keep the partial batch
        check_batch(next(iter(train)), 16, target, len(module.data_train))
        check_batch(next(iter(module.val_dataloader())), 16, target, len(module.data_val))
    assert module.class_names == ["ant", "cat", "dog"]
    # a worker process reads through its own file handle
    module = DownstreamDataModule("nyuv2", nyu, "depth", 16, batch_size=2, num_workers=1)
    module.setup("test")
    module.data_test[0]
    batches = list(module.test_dataloader())
    assert [len(b["name"]) for b in batches] == [2]
    assert batches[0]["name"] == ["nyu_0002", "nyu_0004"]
    assert default_collate([module.data_test[0]])["depth"].shape == (1, 1, 16, 16)


def test_datamodule_errors_and_generation(tmp_path: Path, synthetic: Path) -> None:
    assert set(SOURCES) == {"synthetic", "nyuv2", "ade20k", "folders"}
    assert "nyuv2/depth" in allowed_combinations() and "nyuv2/segmentation" not in allowed_combinations()
    for source, target in (("nyuv2", "segmentation"), ("kitti", "depth"), ("folders", "depth")):
        with pytest.raises(
            ValueError, match=f"source='{source}', target='{target}': expected one of"
        ) as error:
            DownstreamDataModule(source, tmp_path, target, 32)
        assert "synthetic/classification" in one_line(error)
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['blur'\\]"):
        DownstreamDataModule("nyuv2", tmp_path, "depth", 32, augment={"blur": 1})
    with pytest.raises(ValueError, match="nyu_depth_v2_labeled.mat: file not found"):
        DownstreamDataModule("nyuv2", tmp_path, "depth", 32).setup("fit")

    calls = []

    def generate(folder: Path) -> None:
        calls.append(folder)
        shutil.copytree(synthetic, folder, dirs_exist_ok=True)

    target = tmp_path / "generated"
    module = DownstreamDataModule("synthetic", target, "depth", 24, generate_if_missing=generate,
                                  val_fraction=VAL_FRACTION, num_workers=0)  # fmt: skip
    module.prepare_data()
    module.prepare_data()  # the folder now holds shards: nothing to do
    assert calls == [target]
    module.setup("fit")
    assert len(module.data_train) > 0
    with pytest.raises(ValueError, match="empty: shard folder does not exist.*task=depth"):
        DownstreamDataModule("synthetic", tmp_path / "empty", "depth", 24).setup("fit")
