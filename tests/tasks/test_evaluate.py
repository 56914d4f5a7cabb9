"""``python eval.py``: a downstream checkpoint evaluated on its test split, with the constant-predictor baseline,
a metrics JSON and a prediction panel; a checkpoint that is not a downstream one is a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from croco.models.checkpoints import CheckpointError
from croco.tasks.evaluate import evaluate
from croco.tasks.training import train
from tests.conftest import CONF_DIR, REPO_ROOT
from tests.tasks.test_downstream_tasks import _common, dense_shards  # noqa: F401 - module fixture

pytestmark = pytest.mark.usefixtures("single_thread")


def _eval_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="eval"):
            return compose("eval", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def seg_checkpoint(dense_shards, tmp_path_factory) -> Path:  # noqa: F811 - the imported fixture
    from tests.conftest import compose_config

    root = tmp_path_factory.mktemp("segrun")
    cfg = compose_config(["experiment=seg_synthetic", *_common(root), f"data.root={dense_shards}",
                          "data.val_fraction=0.3", "trainer.max_steps=2", "trainer.limit_val_batches=1"], root)  # fmt: skip
    train(cfg)
    return Path(cfg.paths.ckpt_dir) / "last.ckpt"


def test_evaluate_writes_metrics_baseline_and_panel(seg_checkpoint, tmp_path):
    out = evaluate(_eval_cfg(f"ckpt='{seg_checkpoint}'", f"out_dir={tmp_path}", "baseline=true", "num_panel=3",
                             "accelerator=cpu", "data.num_workers=0"))  # fmt: skip
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["task"] == "segmentation" and stored["split"] == "test" and stored["samples"] > 0
    assert set(stored["metrics"]) >= {"miou", "pixel_acc", "loss"}
    # the majority class everywhere: pixel accuracy is that class's share of the labelled test pixels
    assert 0.0 < stored["baseline"]["pixel_acc"] < 1.0 and 0 < stored["baseline"]["constant"] < 19
    assert stored["baseline"]["miou"] <= stored["baseline"]["pixel_acc"]
    assert out["metrics"] == stored["metrics"]
    panel = Image.open(tmp_path / "panel.png")
    assert panel.width > 3 * 64 and panel.height > 3 * 64  # three columns, three rows


def test_a_pretraining_checkpoint_is_refused_in_one_line(tmp_path, tiny_shards, compose_train, tiny_overrides):
    cfg = compose_train(*tiny_overrides(tiny_shards, tmp_path), "trainer.max_steps=1", "trainer.limit_val_batches=1")
    train(cfg)
    ckpt = Path(cfg.paths.ckpt_dir) / "last.ckpt"
    with pytest.raises(CheckpointError, match="task 'croco.tasks.pretrain.PretrainTask' is not a downstream task"):
        evaluate(_eval_cfg(f"ckpt='{ckpt}'", f"out_dir={tmp_path}"))
    run = subprocess.run([sys.executable, "eval.py", f"ckpt='{ckpt}'", f"paths.log_dir={tmp_path}"], cwd=REPO_ROOT,
                         check=False, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("error: ")
