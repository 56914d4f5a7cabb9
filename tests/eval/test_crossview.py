"""The cross-view health metric: scene-aware derangements, the accumulator, a network blind to view 2, CLI."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from croco.data.datamodule import PairDataModule
from croco.data.transforms import denormalize
from croco.eval.crossview import (
    CONDITIONS,
    CrossViewAccumulator,
    ViewPool,
    blank_view,
    evaluate_batch,
    fixed_mask,
    load_network,
    main,
    other_scene_donors,
    other_scene_views,
    per_sample_masked_loss,
    scene_derangement,
)
from croco.models import CheckpointError, CroCoNet, MaskedMSE, export_official_checkpoint

TINY = {"img_size": 32, "patch_size": 8, "enc_embed_dim": 32, "enc_depth": 1, "enc_num_heads": 2,
        "dec_embed_dim": 32, "dec_depth": 1, "dec_num_heads": 2, "pos_embed": "RoPE100"}  # fmt: skip
REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------- views 2


def random_scenes(rng: random.Random) -> list[str]:
    size = rng.randint(1, 24)
    return [f"s{rng.randint(0, rng.randint(0, 5))}" for _ in range(size)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_derangement_never_pairs_a_sample_with_its_own_scene(shuffle):
    rng = random.Random(0)
    for trial in range(300):
        scenes = random_scenes(rng)
        generator = torch.Generator().manual_seed(trial) if shuffle else None
        perm = scene_derangement(scenes, generator)
        largest = max(scenes.count(s) for s in set(scenes))
        if 2 * largest > len(scenes):
            assert perm is None, scenes
            continue
        assert perm is not None and sorted(perm.tolist()) == list(range(len(scenes)))  # each view 2 once
        assert all(scenes[j] != scenes[i] for i, j in enumerate(perm.tolist())), scenes


def test_donors_with_replacement_and_from_the_pool():
    rng = random.Random(1)
    for _ in range(300):
        scenes, pool = random_scenes(rng), random_scenes(rng)[: rng.randint(0, 6)]
        donors = other_scene_donors(scenes, pool).tolist()
        candidates = scenes + pool
        for i, j in enumerate(donors):
            if j < 0:  # skipped only when no other scene exists anywhere
                assert all(c == scenes[i] for c in candidates)
            else:
                assert candidates[j] != scenes[i]
    # a dominant scene: its samples share the few view 2s of the other scene, spread evenly
    assert other_scene_donors(["a", "a", "a", "a", "b"]).tolist() == [4, 4, 4, 4, 0]
    assert other_scene_donors(["a", "a", "a", "b", "c"]).tolist() == [3, 4, 3, 0, 0]


def test_a_single_scene_batch_borrows_from_the_pool_or_is_skipped():
    img2 = torch.randn(3, 3, 8, 8)
    views, valid = other_scene_views(img2, ["a", "a", "a"])
    assert not valid.any() and torch.equal(views, img2)  # placeholders, to be ignored
    pool = ViewPool.of(torch.randn(2, 3, 8, 8), ["a", "b"])
    views, valid = other_scene_views(img2, ["a", "a", "a"], pool)
    assert valid.all() and all(torch.equal(v, pool.img2[1]) for v in views)
    wrong_size = ViewPool.of(torch.randn(2, 3, 16, 16), ["b", "c"])
    assert not other_scene_views(img2, ["a", "a", "a"], wrong_size)[1].any()
    # without scene ids every sample counts as its own scene: another sample's view 2
    views, valid = other_scene_views(img2, None)
    assert valid.all() and all(not torch.equal(views[i], img2[i]) for i in range(3))


def test_blank_view_is_mid_grey_after_imagenet_normalisation():
    grey = blank_view(torch.zeros(2, 3, 4, 5))
    assert grey.shape == (2, 3, 4, 5)
    assert torch.allclose(denormalize(grey), torch.full_like(grey, 0.5), atol=1e-6)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_per_sample_loss_is_masked_mse_per_sample(norm_pix_loss):
    pred, target = torch.randn(4, 16, 12), torch.randn(4, 16, 12) * 2 + 1
    mask = fixed_mask(4, 16, 0.75, seed=3)
    per_sample = per_sample_masked_loss(pred, mask, target, norm_pix_loss)
    assert per_sample.shape == (4,)
    batch = MaskedMSE(norm_pix_loss=norm_pix_loss)(pred, mask, target)
    assert per_sample.mean().item() == pytest.approx(batch.item(), rel=1e-6)
    one = MaskedMSE(norm_pix_loss=norm_pix_loss)(pred[1:2], mask[1:2], target[1:2])
    assert per_sample[1].item() == pytest.approx(one.item(), rel=1e-6)


# --------------------------------------------------------------------------------------------- accumulator


def test_accumulator_bins_and_gaps_against_hand_computed_numbers():
    acc = CrossViewAccumulator(("true", "other", "blank"))
    nan = float("nan")
    # overlaps fall in bins 0, 1, 2, 3, 3 (0.3 and 0.7 open their bins; 1.0 belongs to the last)
    overlap = torch.tensor([0.1, 0.3, 0.6, 0.7, 1.0])
    true = torch.tensor([1.0, 2.0, 3.0, 4.0, 2.0])
    other = torch.tensor([2.0, 2.0, 4.0, nan, 8.0])  # sample 3 had no other scene
    blank = torch.tensor([4.0, 4.0, 6.0, 8.0, 4.0])
    valid = {"other": torch.tensor([True, True, True, False, True])}
    first, rest = slice(0, 2), slice(2, 5)  # in two batches
    for part in (first, rest):
        losses = {"true": true[part], "other": other[part], "blank": blank[part]}
        acc.update(losses, overlap[part], {"other": valid["other"][part]})
    s = acc.summary()
    assert s.bins == ("0.0-0.3", "0.3-0.5", "0.5-0.7", "0.7-1.0")
    assert s.count["true"] == {"all": 5, "0.0-0.3": 1, "0.3-0.5": 1, "0.5-0.7": 1, "0.7-1.0": 2}
    assert s.count["other"]["all"] == 4 and s.count["other"]["0.7-1.0"] == 1
    assert s.loss["true"]["all"] == pytest.approx(2.4) and s.loss["true"]["0.7-1.0"] == pytest.approx(3.0)
    assert s.loss["other"]["all"] == pytest.approx(4.0)
    # the other gap compares the same 4 samples: true mean 2.0 there
    assert s.gap["other"]["all"] == pytest.approx((4.0 - 2.0) / 4.0)
    assert s.gap["blank"]["all"] == pytest.approx((5.2 - 2.4) / 5.2)
    expected = {"0.0-0.3": 0.5, "0.3-0.5": 0.0, "0.5-0.7": 0.25, "0.7-1.0": 0.75}
    assert {k: s.gap["other"][k] for k in expected} == pytest.approx(expected)
    metrics = s.metrics()
    assert set(metrics) == {
        *(f"val/crossview/loss_{c}" for c in ("true", "other", "blank")),
        "val/crossview/gap_other",
        "val/crossview/gap_blank",
        *(f"val/crossview/gap_other_{b}" for b in expected),
    }
    assert metrics["val/crossview/gap_other_0.5-0.7"] == pytest.approx(0.25)
    table = s.markdown()
    assert "| pairs | 5 | 1 | 1 | 1 | 2 |" in table and "| gap other | +50.00% |" in table
    # summing two identical ranks: counts double, means and gaps stay
    acc.reduce_(lambda t: t * 2)
    doubled = acc.summary()
    assert doubled.count["true"]["all"] == 10 and doubled.gap["other"] == pytest.approx(s.gap["other"])


def test_empty_bins_are_nan_in_the_summary_and_absent_from_the_metrics():
    acc = CrossViewAccumulator(("true", "other"))
    acc.update({"true": torch.tensor([1.0]), "other": torch.tensor([1.5])}, torch.tensor([0.9]))
    s = acc.summary()
    assert math.isnan(s.loss["true"]["0.0-0.3"]) and math.isnan(s.gap["other"]["0.0-0.3"])
    assert "val/crossview/gap_other_0.0-0.3" not in s.metrics()
    assert s.metrics()["val/crossview/gap_other_0.7-1.0"] == pytest.approx(1 / 3)
    assert s.to_dict()["gap"]["other"]["0.0-0.3"] is None  # JSON-safe
    assert "| loss true | 1.0000 | - |" in s.markdown()
    with pytest.raises(ValueError, match="must include 'true'"):
        CrossViewAccumulator(("other",))
    with pytest.raises(ValueError, match="increasing edges"):
        CrossViewAccumulator(bins=(0.0, 0.5, 0.5, 1.0))


# --------------------------------------------------------------------------------------------- networks


def crossview_summary(net: CroCoNet):
    torch.manual_seed(1)
    batch = {
        "img1": torch.randn(6, 3, 32, 32),
        "img2": torch.randn(6, 3, 32, 32),
        "overlap": torch.tensor([0.2, 0.4, 0.6, 0.8, 0.9, 1.0]),
        "scene": ["a", "a", "b", "b", "c", "c"],
    }
    result = evaluate_batch(net.eval(), batch, fixed_mask(6, 16, 0.75, seed=0), conditions=CONDITIONS)
    acc = CrossViewAccumulator(CONDITIONS)
    acc.update(result.losses, batch["overlap"], result.valid)
    return acc.summary()


def test_a_network_that_ignores_view_2_has_gap_exactly_zero():
    torch.manual_seed(0)
    net = CroCoNet(**TINY, mask_ratio=0.75)
    summary = crossview_summary(net)
    assert abs(summary.gap["other"]["all"]) > 1e-4 and abs(summary.gap["blank"]["all"]) > 1e-4
    for block in net.dec_blocks:  # the only path from view 2 into the prediction: cross-attention's output
        torch.nn.init.zeros_(block.cross_attn.proj.weight)
        torch.nn.init.zeros_(block.cross_attn.proj.bias)
    blind = crossview_summary(net)
    for condition in ("other", "blank"):
        assert all(value == 0.0 for value in blind.gap[condition].values() if not math.isnan(value))
    assert blind.loss["self"]["all"] == blind.loss["true"]["all"]


# --------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_run(tiny_shards, tmp_path_factory):
    """A 64-pixel PretrainTask after one step, as a Lightning checkpoint (carrying a run config with
    val_fraction 0.3, like train.py's) and as an official .pth."""
    from croco.tasks.pretrain import PretrainTask

    folder = tmp_path_factory.mktemp("crossview")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        task = PretrainTask(model={**TINY, "img_size": 64}, mask_ratio=0.75,
                            optim={"lr": 1e-3, "warmup_epochs": 0, "epochs": 2})  # fmt: skip
        task.run_config = {"data": {"val_fraction": 0.3}}
        datamodule = PairDataModule(
            sources=[str(tiny_shards)],
            img_size=64,
            transforms="crop64",
            batch_size=4,
            num_workers=0,
            pairs_per_epoch=4,
            val_fraction=0.0,
        )
        trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(task, datamodule=datamodule)
        trainer.save_checkpoint(folder / "last.ckpt")
    finally:
        torch.set_num_threads(threads)
    export_official_checkpoint(task.net, folder / "official.pth")
    return folder


def test_cli_prints_the_table_and_writes_json(tiny_run, tiny_shards, tmp_path, capsys, single_thread):
    out = tmp_path / "table.json"
    common = ["--data", str(tiny_shards), "--pairs", "6", "--batch", "4", "--device", "cpu"]
    rc = main(["--ckpt", str(tiny_run / "last.ckpt"), *common, "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "| | all | 0.0-0.3 | 0.3-0.5 | 0.5-0.7 | 0.7-1.0 |" in printed.out
    for row in ("| pairs | 8 |", "| loss true |", "| loss other |", "| loss blank |", "| loss self |",
                "| gap other |", "| gap blank |"):  # fmt: skip
        assert row in printed.out
    assert "val_fraction=0.3, 3 scenes" in printed.out  # the run's held-out scenes, from the checkpoint
    result = json.loads(out.read_text())
    assert result["pairs"] == 8 and result["scenes"] == 3 and result["val_pairs"] == 18
    assert result["count"]["other"]["all"] == 8  # batches of several scenes: nobody skipped
    assert result["loss"]["true"]["0.0-0.3"] is None  # the tiny shards overlap by more than 0.6
    # the official export of the same network gives the same numbers
    official_args = ["--val-fraction", "0.3", "--no-progress", "--out", str(tmp_path / "o.json")]
    rc = main(["--ckpt", str(tiny_run / "official.pth"), *common, *official_args])
    assert rc == 0
    official = json.loads((tmp_path / "o.json").read_text())
    assert official["kind"] == "official" and official["loss"] == result["loss"]


def test_load_network_reads_the_task_settings(tiny_run):
    loaded = load_network(tiny_run / "last.ckpt")
    assert loaded.kind == "lightning" and loaded.norm_pix_loss and loaded.val_fraction == 0.3
    assert loaded.net.mask_generator.mask_ratio == 0.75
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_network(tiny_run / "missing.ckpt")


def test_cli_errors_are_one_line(tiny_run, tiny_shards, tmp_path):
    cases = [
        (["--ckpt", str(tmp_path / "missing.ckpt"), "--data", str(tiny_shards)], "no such checkpoint file"),
        (["--ckpt", str(tiny_run / "last.ckpt"), "--data", str(tmp_path / "nowhere")], "nowhere"),
    ]
    for args, expected in cases:
        run = subprocess.run([sys.executable, "-m", "croco.eval.crossview", *args], capture_output=True,
                             text=True, cwd=REPO_ROOT, timeout=120, check=False)  # fmt: skip
        assert run.returncode == 1
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], run.stderr


def test_plot_script_draws_the_gaps_of_a_run(tmp_path):
    """scripts/plot_crossview.py on a CSVLogger-style metrics.csv (validation rows between training rows)."""
    launch = tmp_path / "launches" / "2024-01-01_00-00-00"
    (launch / "csv").mkdir(parents=True)
    keys = ["loss_true", "loss_other", "loss_blank", "gap_other", "gap_blank", "gap_other_0.7-1.0",
            "gap_other_0.5-0.7"]  # fmt: skip
    header = ["epoch", "step", "train/loss", *(f"val/crossview/{k}" for k in keys)]
    blank = [""] * len(keys)
    rows = [[0, 3, 1.2, *blank], [0, 3, "", 0.6, 0.61, 0.7, 0.016, 0.14, 0.02, 0.01],
            [1, 7, 1.0, *blank], [1, 7, "", 0.5, 0.52, 0.65, 0.038, 0.23, 0.05, "nan"]]  # fmt: skip
    (launch / "csv" / "metrics.csv").write_text(
        "\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n"
    )
    script = REPO_ROOT / "scripts" / "plot_crossview.py"
    run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (launch / "crossview.png").stat().st_size > 0
    assert "gap_other +1.60% at step 3, +3.80% at step 7 (2 validations)" in run.stdout
    assert run.stdout.index("overlap 0.5-0.7") < run.stdout.index("overlap 0.7-1.0")  # bins in order
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,step,train/loss\n0,1,1.0\n")
    run = subprocess.run([sys.executable, str(script), str(empty)], capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert run.returncode == 1 and run.stderr.strip().startswith("error: ")
