"""Bad configs are one line naming the key, before anything is built: keys nothing reads (with the nearest
valid key), values of the wrong type or left at ???, checkpoint files that cannot be read, a GPU trainer on a
machine without one; and an explicitly chosen data source never generates unless asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from croco.models import CroCoNet, export_official_checkpoint
from croco.tasks.checks import check_accelerator, check_keys, validate_train_config
from croco.utils.config import ConfigError, group_options, model_preset
from tests.conftest import CONF_DIR, REPO_ROOT


def _error(cfg, check_data: bool = False) -> str:
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg, check_data=check_data)
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ unknown keys
@pytest.mark.parametrize(
    "override, message",
    [
        ("+masking.ratoi=0.5", "masking.ratoi: unknown key; did you mean masking.ratio?"),
        ("+model.mask_ratio=0.5", "model.mask_ratio: unknown key; did you mean masking.ratio?"),
        ("+optim.lrr=1e-3", "optim.lrr: unknown key; did you mean optim.lr?"),
        ("+data.batch_sise=4", "data.batch_sise: unknown key; did you mean data.batch_size?"),
        (
            "+data.generate_if_missing.pair=10",
            "data.generate_if_missing.pair: unknown key; did you mean data.generate_if_missing.pairs?",
        ),
        ("+trainer.max_epoch=3", "trainer.max_epoch: unknown key; did you mean trainer.max_epochs?"),
        (
            "+callbacks.panels.every_n_step=5",
            "callbacks.panels.every_n_step: unknown key; did you mean callbacks.panels.every_n_steps?",
        ),
        ("+task.norm_pix=true", "task.norm_pix: unknown key; did you mean task.norm_pix_loss?"),
        ("+sed=1", "sed: unknown key; did you mean seed?"),
    ],
)
def test_a_key_nothing_reads_is_refused_with_the_nearest_one(compose_train, override, message):
    assert _error(compose_train("experiment=smoke", override)) == message


def test_downstream_keys_and_pass_through_kwargs(compose_train):
    with pytest.raises(ConfigError, match=r"^finetune.frezee: unknown key; did you mean finetune.freeze\?$"):
        check_keys(compose_train("experiment=depth_synthetic", "+finetune.frezee=2"))
    with pytest.raises(ConfigError, match=r"^task.max_dept: unknown key; did you mean task.max_depth\?$"):
        check_keys(compose_train("experiment=depth_synthetic", "+task.max_dept=5"))
    # targets that take **kwargs for someone else accept any key (wandb.init, Lightning's Trainer arguments)
    check_keys(compose_train("experiment=smoke", "+logger.wandb.notes=first", "+trainer.profiler=simple"))


@pytest.mark.parametrize("debug", group_options(CONF_DIR, "debug"))
def test_debug_options_have_only_known_keys(compose_train, debug):
    check_keys(compose_train("experiment=smoke", f"debug={debug}"))


# ------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.batch_size=abc"], "data.batch_size='abc': expected an integer"),
        (["task.compile=maybe"], "task.compile='maybe': expected true or false"),
        (["seed=abc"], "seed='abc': expected an integer or null"),
        (["model.enc_depth=4.5"], "model.enc_depth=4.5: expected an integer >= 0"),
        (["task=segmentation", "data=dense_synthetic", "data.target=segmentation"],
         "task.num_classes: missing value (???); set it, e.g. task.num_classes=<value> on the command line"),
    ],
)  # fmt: skip
def test_a_wrong_or_missing_value_names_the_key(compose_train, overrides, message):
    assert _error(compose_train("model=tiny", "data.img_size=64", *overrides)) == message


def test_a_gpu_trainer_without_a_gpu_says_what_exists(compose_train):
    cfg = compose_train("trainer=gpu")
    expected = r"^trainer.accelerator=gpu: no GPU on this machine \(accelerators here: cpu\); use trainer=cpu"
    with pytest.raises(ConfigError, match=expected):
        check_accelerator(cfg, available=["cpu"])
    check_accelerator(cfg, available=["cpu", "gpu (1 CUDA device(s))"])
    with pytest.raises(ConfigError, match=r"^trainer.devices=8: this machine has 1 GPU\(s\)"):
        check_accelerator(
            compose_train("trainer=ddp", "trainer.devices=8"), available=["cpu", "gpu (1 CUDA x)"]
        )
    check_accelerator(compose_train("trainer=cpu"), available=["cpu"])
    if not torch.cuda.is_available():  # and validate_train_config runs it on this machine
        assert _error(cfg, check_data=True).startswith("trainer.accelerator=gpu: no GPU on this machine")


# ------------------------------------------------------------------------------------------ checkpoint files
def test_init_files_are_checked_at_start_up(compose_train, tmp_path):
    missing = tmp_path / "CroCo.pth"
    assert _error(compose_train(f"task.init_from={missing}")).startswith(
        f"task.init_from={missing}: no such file"
    )
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert _error(compose_train(f"task.init_from={text}")).startswith(
        f"task.init_from: {text}: not a PyTorch"
    )
    lightning = tmp_path / "last.ckpt"  # pretraining init reads the official layouts only
    torch.save({"state_dict": {}, "hyper_parameters": {}}, lightning)
    assert _error(compose_train(f"task.init_from={lightning}")) == (
        f"task.init_from: {lightning}: expected a dict with a 'model' state dict (official CroCo layout)"
    )
    wide = tmp_path / "wide.pth"
    torch.save({"model": {}, "croco_kwargs": {"enc_embed_dim": 10**9, "enc_num_heads": 1}}, wide)
    message = _error(compose_train("experiment=depth_synthetic", f"finetune.init={wide}"))
    assert message.startswith(
        f"finetune.init: {wide}: croco_kwargs: these arguments describe a network of about"
    )
    good = tmp_path / "good.pth"
    export_official_checkpoint(CroCoNet(**model_preset("tiny")), good)
    validate_train_config(compose_train("experiment=smoke", f"task.init_from={good}"), check_data=False)


def test_a_truncated_resume_file_is_named_with_how_to_start_fresh(compose_train, tmp_path):
    ckpt = tmp_path / "last.ckpt"
    export_official_checkpoint(CroCoNet(**model_preset("tiny")), ckpt)
    validate_train_config(compose_train(f"ckpt_path={ckpt}"), check_data=False)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    message = _error(compose_train(f"ckpt_path={ckpt}"))
    assert (
        message.startswith(f"ckpt_path={ckpt}: truncated or not a checkpoint") and "ckpt_path=null" in message
    )
    ckpt.write_text("a text file")
    assert _error(compose_train(f"ckpt_path={ckpt}")).startswith(
        f"ckpt_path={ckpt}: truncated or not a checkpoint"
    )


# ------------------------------------------------------------------------------------------ generation
SWEEP_DATA = {"folder": "smoke_sweep", "pairs": 1500, "seed": 0, "resolution": 80, "gen_overlap_min": 0.2,
              "workers": 2, "overlap_min": 0.5, "img_size": 64, "pairs_per_epoch": 1024}  # fmt: skip
DATA = {
    "smoke": {**SWEEP_DATA, "folder": "smoke", "gen_overlap_min": 0.5},
    "crossview_cpu": {
        **SWEEP_DATA,
        "folder": "crossview",
        "pairs": 6000,
        "gen_overlap_min": 0.5,
        "pairs_per_epoch": 8192,
    },
    "sweep_mask_overlap": SWEEP_DATA,
}


@pytest.mark.parametrize("experiment", sorted(DATA))
def test_experiments_keep_their_data(compose_train, tmp_path, experiment):
    data = compose_train(f"experiment={experiment}").data
    generate = data.generate_if_missing
    assert [s.path for s in data.sources] == [f"{tmp_path}/data/{DATA[experiment]['folder']}"]
    assert generate._target_ == "croco.synth.pipeline.generate_pairs" and generate._partial_
    got = {
        "folder": DATA[experiment]["folder"],
        "pairs": generate.pairs,
        "seed": generate.seed,
        "resolution": generate.resolution,
        "gen_overlap_min": generate.overlap_min,
        "workers": generate.workers,
        "overlap_min": data.overlap_min,
        "img_size": data.img_size,
        "pairs_per_epoch": data.pairs_per_epoch,
    }
    assert got == DATA[experiment]
    assert (generate.pairs_per_scene, generate.pairs_per_shard) == (5, 500)


@pytest.mark.parametrize("experiment", sorted(DATA))
def test_an_explicit_data_choice_never_generates(compose_train, tmp_path, experiment):
    mine = tmp_path / "my_pairs"
    cfg = compose_train(f"experiment={experiment}", "data=shards", f"data.sources=[{{path: '{mine}'}}]")
    assert cfg.data.generate_if_missing is None and [s.path for s in cfg.data.sources] == [str(mine)]
    assert cfg.data.img_size == 64  # the experiment's other data settings still apply
    message = _error(cfg, check_data=True)  # the folder must hold data: nothing will generate it
    assert message.startswith("data.sources[0].path: ") and "generate or import" in message


def test_train_py_refuses_a_typo_in_one_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "train.py", "experiment=smoke", "+masking.ratoi=0.5", f"paths.root_dir={tmp_path}",
         "logger=none"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: masking.ratoi: unknown key; did you mean masking.ratio?")
    assert not Path(tmp_path, "data", "smoke").exists()  # nothing was generated
