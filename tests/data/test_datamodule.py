"""PairDataModule: overlap range, scene split, weighted epochs, DDP sharding, workers, Lightning, bad input."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import default_collate

from croco.data.datamodule import PairDataModule
from croco.data.dataset import CorruptDataError, collate_pairs
from croco.data.index import is_val_scene
from croco.data.sampler import EpochPairSampler
from croco.data.shards import ShardError, ShardReader
from tests.data.conftest import write_shard


def _module(folder: Path | list, **overrides) -> PairDataModule:
    options = {
        "img_size": 48,
        "transforms": "crop48+acolor",
        "batch_size": 8,
        "num_workers": 0,
        "val_fraction": 0.3,
    }
    options.update(overrides)
    sources = folder if isinstance(folder, list) else [{"path": str(folder), "weight": 1.0}]
    return PairDataModule(sources, **options)


def _all_pairs(folder: Path) -> list[tuple[str, float]]:
    return [
        (s, float(o))
        for r in map(ShardReader, sorted(folder.glob("*.h5")))
        for s, o in zip(r.scene, r.overlap)
    ]


def test_overlap_range_and_scene_split(shard_folder: Path) -> None:
    module = _module(shard_folder, overlap_min=0.25, overlap_max=0.75)
    module.setup("fit")
    pairs = _all_pairs(shard_folder)
    in_range = [(s, o) for s, o in pairs if 0.25 <= o <= 0.75]
    expected_val = [(s, o) for s, o in in_range if is_val_scene(s, 0.3)]
    assert 0 < len(expected_val) < len(in_range)  # the fixture's scenes land on both sides
    report = module.report
    assert report.pairs == len(pairs) == 48
    assert (report.train, report.val) == (len(in_range) - len(expected_val), len(expected_val))
    assert report.dropped_train + report.dropped_val == len(pairs) - len(in_range)

    seen: dict[str, list] = {}
    for split, loader in (("train", module.train_dataloader()), ("val", module.val_dataloader())):
        for batch in loader:
            batch = module.on_after_batch_transfer(batch, 0)
            assert batch["img1"].shape[1:] == (3, 48, 48) and batch["img1"].dtype == torch.float32
            assert batch["overlap"].min() >= 0.25 and batch["overlap"].max() <= 0.75
            seen.setdefault(split, []).extend(zip(batch["scene"], batch["pair"].tolist(), strict=True))
    train_scenes = {s for s, _ in seen["train"]}
    val_scenes = {s for s, _ in seen["val"]}
    assert not train_scenes & val_scenes  # split by scene, never by pair
    assert val_scenes == {s for s, _ in expected_val}
    assert len(seen["val"]) == len(expected_val)  # val: every pair once, in order, nothing dropped
    # train: one epoch (drop_last) visits distinct pairs only
    train_ids = [p for _, p in seen["train"]]
    assert len(train_ids) == (report.train // 8) * 8 and len(set(train_ids)) == len(train_ids)


def test_val_overlap_validates_every_run_on_the_same_pairs(shard_folder: Path) -> None:
    """Runs trained on different overlap ranges validate on one fixed range (data.val_overlap)."""
    pairs = _all_pairs(shard_folder)
    val_pairs = {}
    for train_range in ((0.0, 0.4), (0.6, 1.0)):
        module = _module(shard_folder, overlap_min=train_range[0], overlap_max=train_range[1], val_overlap=[0.25, 1.0])
        module.setup("fit")
        expected_train = [(s, o) for s, o in pairs if train_range[0] <= o <= train_range[1] and not is_val_scene(s, 0.3)]
        assert module.report.train == len(expected_train)
        val_pairs[train_range] = sorted(
            (s, round(float(o), 6)) for batch in module.val_dataloader() for s, o in zip(batch["scene"], batch["overlap"])
        )
    expected_val = sorted((s, round(o, 6)) for s, o in pairs if 0.25 <= o <= 1.0 and is_val_scene(s, 0.3))
    assert val_pairs[(0.0, 0.4)] == val_pairs[(0.6, 1.0)] == expected_val
    with pytest.raises(ValueError, match=r"data.val_overlap=\[0.5, 0.2\]: expected \[min, max\]"):
        _module(shard_folder, val_overlap=[0.5, 0.2])


@pytest.mark.parametrize("transforms", ["crop48+acolor", "resize56+crop48+acolor"])
def test_decoding_on_the_device_gives_the_same_batches(shard_folder: Path, transforms: str) -> None:
    """data.decode_on_device: the workers leave the JPEGs encoded and plan the crops, the batch is decoded in
    on_before_batch_transfer (here on the CPU; nvJPEG on a GPU): the same pixels, crops and jitter."""
    batches = {}
    for on_device in (False, True):
        module = _module(shard_folder, transforms=transforms, decode_on_device=on_device)
        module.setup("fit")
        batches[on_device] = [module.on_after_batch_transfer(module.on_before_batch_transfer(b, 0), 0)
                              for loader in (module.train_dataloader(), module.val_dataloader()) for b in loader]  # fmt: skip
    assert len(batches[False]) == len(batches[True]) > 2
    for plain, decoded in zip(batches[False], batches[True], strict=True):
        assert plain.keys() == decoded.keys()
        for key, value in plain.items():
            if torch.is_tensor(value):
                torch.testing.assert_close(decoded[key], value, rtol=0, atol=0, msg=key)
            else:
                assert decoded[key] == value, key
    with pytest.raises(ValueError, match="data.decode_on_device=true needs data.homography=0"):
        _module(shard_folder, decode_on_device=True, homography=0.5)


def test_weighted_sources_share_each_epoch(tmp_path: Path) -> None:
    big, small = tmp_path / "big", tmp_path / "small"
    write_shard(big / "s.h5", [f"b{i}" for i in range(30)], [0.5] * 30)
    write_shard(small / "s.h5", [f"s{i}" for i in range(7)], [0.5] * 7)
    module = _module(
        [{"path": big, "weight": 1.0}, {"path": small, "weight": 3.0}], val_fraction=0.0, pairs_per_epoch=200
    )
    module.setup("fit")
    sampler = module.train_sampler()
    assert len(sampler) == 200
    keys = list(sampler)
    source = module.data_train.index.source
    counts = Counter(int(source[p]) for p, _ in keys)
    assert counts == {0: 50, 1: 150}
    small_ids = Counter(p for p, _ in keys if source[p] == 1)
    assert set(small_ids.values()) <= {21, 22}  # without replacement inside a source until it runs out
    assert len({seed for _, seed in keys}) == 200  # a seed per sample


def test_sampler_epochs_and_distributed_sharding() -> None:
    source = np.array([0] * 40 + [1] * 10)
    sampler = EpochPairSampler(source, [1.0, 1.0], pairs_per_epoch=60, seed=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0  # deterministic for (seed, epoch)
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    assert list(EpochPairSampler(source, [1.0, 1.0], 60, seed=4)) != epoch0

    # Lightning wraps custom samplers in DistributedSamplerWrapper under DDP: ranks split one epoch draw.
    ranks = []
    for rank in range(2):
        inner = EpochPairSampler(source, [1.0, 1.0], pairs_per_epoch=60, seed=3)
        wrapper = DistributedSamplerWrapper(inner, num_replicas=2, rank=rank, shuffle=True, seed=0)
        wrapper.set_epoch(1)  # forwarded to our sampler
        assert inner.epoch == 1
        ranks.append(list(wrapper))
    assert len(ranks[0]) == len(ranks[1]) == 30
    sampler.set_epoch(1)
    assert Counter(ranks[0] + ranks[1]) == Counter(list(sampler))

    without_set_epoch = EpochPairSampler(source, [1.0, 1.0], pairs_per_epoch=60, seed=3)
    assert list(without_set_epoch) == epoch0 and list(without_set_epoch) != epoch0  # passes count as epochs
    with pytest.raises(ValueError, match="no training pairs"):
        EpochPairSampler(source, [0.0, 0.0])


def test_batched_fetch_equals_per_item_collation(shard_folder: Path, corrupt_pair) -> None:
    """``__getitems__`` (decode into reused buffers, crops copied into the batch) == items collated one by one."""
    corrupt_pair(shard_folder / "shard-00000.h5", 2)
    module = _module(shard_folder, val_fraction=0.0, max_bad_fraction=0.5)
    module.setup("fit")
    dataset = module.data_train
    keys = list(module.train_sampler())[:12] + [(2, 99)]  # includes the corrupt pair: replaced in both paths
    batched = dataset.__getitems__(keys)
    single = default_collate([dataset[key] for key in keys])
    assert set(batched) == set(single) == {"img1", "img2", "jitter", "overlap", "scene", "pair"}
    for name in ("img1", "img2", "jitter", "overlap", "pair"):
        assert torch.equal(batched[name], single[name]), name
    assert batched["scene"] == single["scene"]
    assert batched["pair"][-1] == 3 and module.bad_pairs == 1
    assert collate_pairs(batched) is batched


def test_workers_share_bad_pair_count(shard_folder: Path, corrupt_pair) -> None:
    corrupt_pair(shard_folder / "shard-00000.h5", 3)
    module = _module(
        shard_folder,
        num_workers=2,
        val_fraction=0.0,
        persistent_workers=True,
        max_bad_fraction=0.5,
        pairs_per_epoch=48,
    )
    module.setup("fit")
    loader = module.train_dataloader()
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        batches = [module.on_after_batch_transfer(b, 0) for b in loader]
        assert len(batches) == 6
        assert all(b["img1"].shape == (8, 3, 48, 48) for b in batches)
        assert 3 not in torch.cat([b["pair"] for b in batches]).tolist()  # replaced, never returned
    assert module.bad_pairs == 1  # marked by a worker process, visible here


def test_corrupt_pairs_are_skipped_counted_then_fatal(shard_folder: Path, corrupt_pair, caplog) -> None:
    corrupt_pair(shard_folder / "shard-00001.h5", 5)
    module = _module(shard_folder, val_fraction=0.0, max_bad_fraction=0.05)
    module.setup("fit")
    dataset = module.data_train
    bad_id = int(np.flatnonzero((dataset.index.shard == 1) & (dataset.index.local == 5))[0])
    with caplog.at_level(logging.WARNING, logger="croco.data.datamodule"):
        sample = dataset[bad_id]
    assert sample["pair"] == bad_id + 1  # the next readable pair stands in
    assert module.bad_pairs == 1
    assert "shard-00001.h5: pair 5 image2" in caplog.text
    dataset[bad_id]  # a known-bad pair is skipped without a second count
    assert module.bad_pairs == 1

    strict = _module(shard_folder, val_fraction=0.0, max_bad_fraction=0.0)
    strict.setup("fit")
    with pytest.raises(
        CorruptDataError, match=r"1 of 48 train pairs are corrupt, more than max_bad_fraction=0\.0"
    ):
        strict.data_train[bad_id]


def test_bad_inputs_give_one_line_errors(tmp_path: Path, shard_folder: Path) -> None:
    with pytest.raises(ShardError, match="missing: shard folder does not exist"):
        _module(tmp_path / "missing").setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match=r"empty: no shards"):
        _module(tmp_path / "empty").setup("fit")

    truncated = shard_folder / "shard-00001.h5"
    with open(truncated, "r+b") as handle:
        handle.truncate(truncated.stat().st_size // 3)
    with pytest.raises(ShardError, match=r"shard-00001\.h5: ") as info:
        _module(shard_folder).setup("fit")
    assert "\n" not in str(info.value)

    future = write_shard(tmp_path / "future" / "a.h5", ["s"], [0.5])
    with h5py.File(future, "r+") as handle:
        handle.attrs["schema_version"] = 99
    with pytest.raises(ShardError, match=r"a\.h5: schema version 99"):
        _module(future.parent).setup("fit")

    small = write_shard(tmp_path / "small" / "a.h5", ["s"], [0.5], size=32)
    with pytest.raises(ShardError, match=r"a\.h5: crop48\+acolor needs images of at least 48x48"):
        _module(small.parent).setup("fit")
    with pytest.raises(ShardError, match=r"no training pairs with overlap in \[0\.9, 1\.0\]"):
        _module(write_shard(tmp_path / "ok" / "a.h5", ["s"], [0.5]).parent, overlap_min=0.9).setup("fit")
    with pytest.raises(ValueError, match="overlap_min <= overlap_max"):
        _module(shard_folder, overlap_min=0.8, overlap_max=0.2)
    with pytest.raises(ValueError, match="expected keys path, optional weight and generate"):
        PairDataModule([{"folder": "x"}])


def test_prepare_data_generates_into_empty_sources(tmp_path: Path) -> None:
    """``generate_if_missing`` is called with every empty source folder (here a stand-in for the generator)."""
    calls = []

    def fake_generate_pairs(out_dir, pairs, *, seed=0, resolution=256, **kwargs):
        calls.append((Path(out_dir), pairs, seed, resolution))
        write_shard(
            Path(out_dir) / "shard-00000.h5", [f"g{i}" for i in range(pairs)], [0.5] * pairs, size=resolution
        )
        return [Path(out_dir) / "shard-00000.h5"]

    target = tmp_path / "synthetic"
    generate = functools.partial(fake_generate_pairs, pairs=12, seed=5, resolution=64)
    module = _module(target, generate_if_missing=generate, val_fraction=0.0)
    module.prepare_data()
    module.prepare_data()  # shards exist now: nothing regenerated
    assert calls == [(target, 12, 5, 64)]
    module.setup("fit")
    assert len(module.data_train) == 12
    assert module.val_dataloader() == []  # no validation scenes: Lightning skips validation
    with pytest.raises(ValueError, match=r"^data.generate_if_missing=\{'pairs': 12\}: expected null or a callable"):
        _module(target, generate_if_missing={"pairs": 12})


def test_a_source_with_its_own_generator_is_filled_after_the_shared_ones(tmp_path: Path) -> None:
    """Self-pairs made from another source: listed first, generated after the folder they read."""
    from croco.importers.selfpairs import generate_selfpairs

    order = []

    def fake_generate_pairs(out_dir, pairs):
        order.append("pairs")
        write_shard(Path(out_dir) / "shard-00000.h5", [f"g{i}" for i in range(pairs)], [0.6] * pairs, size=48)

    def selfpairs(out_dir, **kwargs):
        order.append("self")
        return generate_selfpairs(out_dir, **kwargs)

    pairs, self_pairs = tmp_path / "pairs", tmp_path / "self"
    sources = [
        {"path": str(self_pairs), "weight": 0.5,
         "generate": functools.partial(selfpairs, input=pairs, resolution=48, progress=False)},
        {"path": str(pairs), "weight": 0.5},
    ]  # fmt: skip
    module = _module(sources, generate_if_missing=functools.partial(fake_generate_pairs, pairs=6), val_fraction=0.0)
    module.prepare_data()
    module.prepare_data()  # both folders hold shards now: nothing is generated again
    assert order == ["pairs", "self"]
    module.setup("fit")
    assert len(module.data_train) == 6 + 12  # every view of the 6 pairs as a pair with itself
    reader = ShardReader(next(self_pairs.glob("*.h5")))
    assert len(reader) == 12 and set(reader.scene) == {f"g{i}" for i in range(6)}
    with pytest.raises(ValueError, match=r"data source x: generate=3: expected null or a callable"):
        PairDataModule([{"path": "x", "generate": 3}])


class _Probe(L.LightningModule):
    """Records what the training step receives (after the DataModule's on_after_batch_transfer)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[dict] = []

    def training_step(self, batch, batch_idx):
        self.seen.append({"epoch": self.current_epoch, "img1": batch["img1"], "pair": batch["pair"]})
        return (self.weight * batch["img1"].mean()).sum()

    def validation_step(self, batch, batch_idx):
        assert batch["img2"].dtype == torch.float32

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_fit_uses_batched_jitter_and_new_draw_per_epoch(shard_folder: Path) -> None:
    module = _module(shard_folder, pairs_per_epoch=16, val_fraction=0.3)
    probe = _Probe()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
    )
    trainer.fit(probe, datamodule=module)
    assert len(probe.seen) == 4  # 16 pairs per epoch / batch 8, two epochs
    first = probe.seen[0]["img1"]
    assert first.dtype == torch.float32 and first.shape == (8, 3, 48, 48)
    assert first.min() < -0.5 and first.max() > 0.5  # ImageNet-normalised, not uint8 or [0, 1]
    epoch0 = torch.cat([s["pair"] for s in probe.seen if s["epoch"] == 0]).tolist()
    epoch1 = torch.cat([s["pair"] for s in probe.seen if s["epoch"] == 1]).tolist()
    assert epoch0 != epoch1
    assert trainer.train_dataloader.sampler.epoch == 1  # Lightning's set_epoch reached the sampler


def test_sampler_resumes_an_epoch_where_every_rank_stopped():
    """Mid-epoch resume: after k batches of B on each of W ranks (rank r reads every W-th sample), every rank
    continues with its own batch k + 1; the length stays the same (the trainer ends the epoch before the
    consumed samples that moved to the end)."""
    sampler = EpochPairSampler(np.zeros(40, dtype=np.int64), [1.0], seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    world, batch, k = 2, 4, 3
    sampler.resume_at(epoch=2, start=k * batch * world)
    sampler.set_epoch(0)  # the trainer may set the epoch only after the pass has started: the resume wins
    resumed = list(sampler)
    assert len(resumed) == len(full) and sorted(resumed) == sorted(full)
    for rank in range(world):
        assert resumed[rank::world][: len(full) // world - k * batch] == full[rank::world][k * batch :]
    sampler.set_epoch(2)
    assert list(sampler) == full  # the next pass is a plain one again
