"""Stereo, flow and relative pose end to end: every binocular experiment runs with ``fast_dev_run`` (the synthetic
ones on generated shards, the paper-sized ones on tiny copies of the benchmarks' layouts), ``eval.py`` scores a
checkpoint against the best constant predictor, and ``predict.py`` writes readable files from a run of ours and
from a file in the official CroCo-Stereo layout."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from croco.data.stereoflow_io import read_flo, read_pfm
from croco.models.downstream import CroCoDownstreamBinocular
from croco.models.dpt import PixelwiseTaskWithDPT
from croco.models.tiling import tiled_pred
from croco.tasks.evaluate import evaluate
from croco.tasks.predict import predict_pair
from croco.tasks.training import train
from tests.conftest import compose_config
from tests.data.stereoflow_fixtures import write_flyingchairs, write_kitti, write_middlebury, write_sintel
from tests.tasks.test_evaluate import _eval_cfg

pytestmark = pytest.mark.usefixtures("single_thread")

DECODER = ["model.dec_embed_dim=128", "model.dec_depth=4", "model.dec_num_heads=4"]  # as the experiments


@pytest.fixture(scope="module")
def binocular_shards(tmp_path_factory) -> dict[str, Path]:
    """12 pairs (12 scenes) per task of the embedded generator, 48 px."""
    from croco.synth.pipeline import generate_pairs

    root = tmp_path_factory.mktemp("binocular")
    out = {}
    for kind, task in (("stereo", "stereo"), ("flow", "flow"), ("pose", "pretrain")):
        out[kind] = root / kind
        generate_pairs(out[kind], pairs=12, task=task, resolution=48, pairs_per_scene=1, pairs_per_shard=12,
                       workers=0, progress=False, seed=7, overlap_min=0.2 if kind == "pose" else 0.05)  # fmt: skip
    return out


def _common(root: Path) -> list[str]:
    return [
        "model=tiny", *DECODER, "data.crop_size=[32,32]", "model.img_size=[32,32]", "data.batch_size=2",
        "data.num_workers=0", "data.generate_if_missing=null", "trainer=cpu", "trainer.precision=32-true",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv",
        f"paths.root_dir={root}",
    ]  # fmt: skip


VAL_METRIC = {"stereo": "avgerr", "flow": "epe", "pose": "rot_mean"}


@pytest.mark.parametrize("kind", ["stereo", "flow", "pose"])
def test_synthetic_binocular_experiments_run_fast_dev_run(kind, binocular_shards, tmp_path):
    crops = ["data.val_crop_size=[32,32]"] if kind == "pose" else []  # stereo / flow: whole views, tiled
    cfg = compose_config([f"experiment={kind}_synthetic", *_common(tmp_path), f"data.root={binocular_shards[kind]}",
                          "data.val_fraction=0.4", "trainer.fast_dev_run=true", *crops], tmp_path)  # fmt: skip
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    assert math.isfinite(metrics[f"val/{VAL_METRIC[kind]}"])


def _stereo_sources(tmp_path: Path) -> list[str]:
    middlebury = write_middlebury(tmp_path / "Middlebury", ["Adirondack", "Umbrella-imperfect"], size=(40, 48))
    kitti = write_kitti(tmp_path / "KITTI2015", 2015, frames=7, size=(40, 48))
    return [(f"data.source=[{{name: middlebury, root: '{middlebury}', repeat: 2}}, "
            f"{{name: kitti2015, root: '{kitti}', repeat: 1}}]"), "data.val_crop_size=[32,32]"]  # fmt: skip


def _flow_sources(tmp_path: Path) -> list[str]:
    sintel = write_sintel(tmp_path / "MPI-Sintel", {"alley_1": 3, "temple_2": 3}, passes=("clean", "final"))
    chairs = write_flyingchairs(tmp_path / "FlyingChairs_release", [1, 1, 2, 2])
    # whole 12x16 validation frames: smaller than the 32x32 tile, so tiled prediction upscales them
    return [(f"data.source=[{{name: sintel, root: '{sintel}', repeat: 2, pass_: clean}}, "
            f"{{name: flyingchairs, root: '{chairs}', repeat: 1}}]"), "data.batch_size=1"]  # fmt: skip


@pytest.mark.parametrize("kind", ["stereo", "flow", "pose"])
def test_paper_sized_binocular_experiments_run_on_the_benchmarks_layouts(kind, binocular_shards, tmp_path):
    sources = {"stereo": _stereo_sources, "flow": _flow_sources}
    data = sources[kind](tmp_path) if kind in sources else [f"data.root={binocular_shards['pose']}",
                                                             "data.val_fraction=0.4", "data.val_crop_size=[32,32]"]  # fmt: skip
    cfg = compose_config([f"experiment={kind}", *_common(tmp_path), *data, "trainer.fast_dev_run=true"], tmp_path)
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])


@pytest.fixture(scope="module")
def stereo_run(binocular_shards, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stereorun")
    cfg = compose_config(["experiment=stereo_synthetic", *_common(root), f"data.root={binocular_shards['stereo']}",
                          "data.val_fraction=0.4", "trainer.max_steps=2", "trainer.limit_val_batches=1"], root)  # fmt: skip
    train(cfg)
    return Path(cfg.paths.ckpt_dir) / "last.ckpt"


def test_evaluate_a_stereo_run_against_the_best_constant_disparity(stereo_run, tmp_path):
    out = evaluate(_eval_cfg(f"ckpt='{stereo_run}'", f"out_dir={tmp_path}", "baseline=true", "num_panel=2",
                             "accelerator=cpu", "data.num_workers=0"))  # fmt: skip
    assert out["task"] == "stereo" and out["samples"] > 0
    assert {"avgerr", "rmse", "bad1", "bad3"} <= set(out["metrics"])
    assert out["baseline"]["constant"] > 0 and math.isfinite(out["baseline"]["avgerr"])
    assert (tmp_path / "panel.png").is_file() and (tmp_path / "metrics.json").is_file()


def _pair(tmp_path: Path, size: tuple[int, int]) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    return paths[0], paths[1]


def test_predict_writes_the_tiled_prediction_from_our_run(stereo_run, tmp_path):
    img1, img2 = _pair(tmp_path, (40, 56))  # larger than the 32x32 crop: several tiles
    files = predict_pair(stereo_run, "stereo", img1, img2, tmp_path / "out", overlap=0.5)
    disparity, _ = read_pfm(files["prediction"])
    conf, _ = read_pfm(files["confidence"])
    assert disparity.shape == conf.shape == (40, 56) and np.isfinite(disparity).all()
    assert Image.open(files["picture"]).size == (56, 40)
    with pytest.raises(ValueError, match="a stereo checkpoint, not flow"):
        predict_pair(stereo_run, "flow", img1, img2, tmp_path / "out2")


def test_predict_reads_the_official_crocoflow_layout(tmp_path):
    kwargs = {"img_size": [32, 32], "patch_size": 8, "enc_embed_dim": 32, "enc_depth": 2, "enc_num_heads": 2,
              "dec_embed_dim": 32, "dec_depth": 2, "dec_num_heads": 2, "pos_embed": "RoPE100"}  # fmt: skip
    net = CroCoDownstreamBinocular(PixelwiseTaskWithDPT(num_channels=3, hooks_idx=[0, 1, 2, 3]), **kwargs).eval()
    args = argparse.Namespace(croco_args=kwargs, task="flow", crop=[32, 32])
    torch.save({"model": net.state_dict(), "args": args, "epoch": 3}, tmp_path / "crocoflow.pth")
    img1, img2 = _pair(tmp_path, (32, 48))
    files = predict_pair(tmp_path / "crocoflow.pth", "flow", img1, img2, tmp_path / "out")
    flow = read_flo(files["prediction"])
    with torch.no_grad():
        from croco.data.dense import load_image
        from croco.data.transforms import normalize

        pair = [normalize(load_image(p).float().div(255).unsqueeze(0)) for p in (img1, img2)]
        expected, _ = tiled_pred(net, *pair, window=(32, 32), overlap=0.7, conf_mode="conf_expsigmoid_10_5", channels=2)
    np.testing.assert_allclose(flow, expected[0].permute(1, 2, 0).numpy(), atol=1e-5)


def test_evaluate_a_pose_run_writes_its_figure(binocular_shards, tmp_path):
    cfg = compose_config(["experiment=pose_synthetic", *_common(tmp_path), f"data.root={binocular_shards['pose']}",
                          "data.val_fraction=0.4", "data.val_crop_size=[32,32]", "trainer.max_steps=2",
                          "trainer.limit_val_batches=1"], tmp_path)  # fmt: skip
    train(cfg)
    out = evaluate(_eval_cfg(f"ckpt='{Path(cfg.paths.ckpt_dir) / 'last.ckpt'}'", f"out_dir={tmp_path / 'eval'}",
                             "baseline=true", "num_panel=2", "accelerator=cpu", "data.num_workers=0"))  # fmt: skip
    assert out["task"] == "pose" and out["samples"] > 0 and out["baseline"]["rot_mean"] > 0
    with Image.open(tmp_path / "eval" / "pose.png") as figure:
        assert figure.width > 1000 and figure.height > 300
