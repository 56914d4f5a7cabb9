"""Every config composes; config errors are one line naming the key and the allowed values; only allowed
targets are instantiated; the croco.* resolvers behave."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from croco.tasks.checks import validate_train_config
from croco.utils.config import ConfigError, check_group_choices, group_options
from croco.utils.instantiate import InstantiationError, check_targets, instantiate
from croco.utils.resolvers import run_name_from_overrides, wandb_api_key_configured
from croco.utils.sizes import as_hw

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

EXPERIMENTS = group_options(CONF_DIR, "experiment")


def test_expected_options_exist():
    assert {"pretrain", "pretrain_v2", "smoke", "sweep_mask_overlap"} <= set(EXPERIMENTS)
    assert {"cpu", "gpu", "ddp", "multinode", "ddp_sim", "default"} <= set(group_options(CONF_DIR, "trainer"))
    assert {"wandb", "csv"} <= set(group_options(CONF_DIR, "logger"))
    assert {"synthetic", "shards", "habitat_release", "crops"} <= set(group_options(CONF_DIR, "data"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(compose_train, experiment):
    cfg = compose_train(f"experiment={experiment}")
    if cfg.task._target_ == "croco.tasks.pretrain.PretrainTask":
        assert cfg.task.mask_ratio == cfg.masking.ratio
    else:  # downstream: the backbone is built at the task's image size
        sizes = OmegaConf.to_container(cfg, resolve=True)
        data_size = sizes["data"].get("img_size", sizes["data"].get("crop_size"))  # monocular | binocular
        assert as_hw(sizes["model"]["img_size"]) == as_hw(data_size)
    assert cfg.run_name == experiment  # stable run name = the experiment
    assert cfg.paths.ckpt_dir.endswith(f"runs/{experiment}/checkpoints")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    validate_train_config(cfg, check_data=False)


def test_recipes_of_the_paper_experiments(compose_train):
    v1 = compose_train("experiment=pretrain")
    assert (v1.model.enc_embed_dim, v1.model.dec_embed_dim, v1.model.pos_embed) == (768, 512, "cosine")
    assert (v1.masking.ratio, v1.optim.blr, v1.data.batch_size) == (0.9, 1.5e-4, 64)
    assert (v1.optim.warmup_epochs, v1.optim.epochs, v1.trainer.max_epochs) == (40, 800, 400)
    assert (
        list(v1.optim.betas) == [0.9, 0.95] and v1.optim.weight_decay == 0.05 and v1.optim.clip_grad is None
    )
    v2 = compose_train("experiment=pretrain_v2")
    assert v2.model.pos_embed == "RoPE100"
    assert (v2.optim.warmup_epochs, v2.optim.epochs, v2.trainer.max_epochs) == (12, 250, 125)


def test_sweep_experiment_declares_the_grid(compose_train):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="train"):
        cfg = compose("train", overrides=["experiment=sweep_mask_overlap"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert set(params) == {"masking.ratio", "data.overlap_min"}
    assert (
        len(str(params["masking.ratio"]).split(",")) >= 2
        and len(str(params["data.overlap_min"]).split(",")) >= 2
    )
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp_sim"])
def test_cpu_trainers_instantiate(compose_train, trainer, tmp_path):
    cfg = compose_train(f"trainer={trainer}")
    built = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert built.precision in ("32-true", "bf16-mixed")
    assert built.max_epochs == cfg.trainer.max_epochs
    assert Path(built.default_root_dir) == Path(cfg.paths.run_dir)


def test_gpu_trainers_compose(compose_train):
    gpu = compose_train("trainer=gpu")
    assert gpu.trainer.precision == "bf16-mixed" and gpu.trainer.accelerator == "gpu"
    ddp = compose_train("trainer=ddp", "trainer.devices=8")
    assert ddp.trainer.devices == 8 and ddp.trainer.strategy._target_.endswith("DDPStrategy")
    multi = compose_train("trainer=multinode")
    assert multi.trainer.num_nodes == 2
    plugins = [instantiate(p) for p in multi.trainer.plugins]
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    slurm = [p for p in plugins if isinstance(p, SLURMEnvironment)]
    assert slurm and slurm[0].auto_requeue and slurm[0].requeue_signal.name == "SIGUSR1"


def test_slurm_launcher_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="train"):
        cfg = compose(
            "train", overrides=["hydra/launcher=slurm", "trainer=multinode", "trainer.devices=4"],
            return_hydra_config=True,
        )  # fmt: skip
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4 and launcher.nodes == 2
    assert launcher.max_num_timeout > 0
    # SLURM sends the signal on which Lightning writes an hpc checkpoint and requeues
    assert launcher.additional_parameters.signal.startswith("USR1@")
    assert any(p.get("requeue_signal") == "SIGUSR1" for p in cfg.trainer.plugins)


def test_loggers_and_callbacks_instantiate(compose_train, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from croco.utils.logging import build_callbacks, build_loggers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    cfg = compose_train("logger=[csv,wandb]")
    loggers = build_loggers(cfg.logger, run_dir=cfg.paths.run_dir)
    assert {type(x) for x in loggers} == {CSVLogger, WandbLogger}
    wandb = next(x for x in loggers if isinstance(x, WandbLogger))
    assert wandb._offline is True  # no API key -> offline, never online by accident
    assert (Path(cfg.paths.run_dir) / "wandb_id.txt").read_text().strip() == wandb._id
    names = {type(c).__name__ for c in build_callbacks(cfg.callbacks)}
    assert names == {"RunCheckpoint", "Panels", "ThroughputMonitor", "RunPlan", "ExportOfficialCheckpoint"}


def test_wandb_id_is_kept_when_resuming_and_renewed_when_not(tmp_path):
    from croco.utils.logging import stable_wandb_id

    first = stable_wandb_id(tmp_path, resuming=False)
    assert stable_wandb_id(tmp_path, resuming=True) == first
    assert stable_wandb_id(tmp_path, resuming=False) != first


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.1"])
def test_mask_ratio_outside_open_interval(compose_train, ratio):
    cfg = compose_train(f"masking.ratio={ratio}")
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg, check_data=False)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"masking.ratio={ratio}")
    assert "strictly between 0 and 1" in message


def test_mask_ratio_that_masks_no_patch(compose_train):
    cfg = compose_train("model=tiny", "data.img_size=64", "masking.ratio=0.01")  # 64 patches: int(0.64) = 0
    with pytest.raises(ConfigError, match=r"masking.ratio=0.01: masks no patch of the 8x8 grid"):
        validate_train_config(cfg, check_data=False)


def test_image_size_not_divisible_by_patch(compose_train):
    cfg = compose_train("model.img_size=100", "data.img_size=100")
    with pytest.raises(ConfigError, match=r"^model.img_size=100: not divisible by model.patch_size=16; allowed: "
                                          r"positive multiples of 16 \(e.g. 96\)$"):  # fmt: skip
        validate_train_config(cfg, check_data=False)


def test_image_size_differs_between_model_and_data(compose_train):
    cfg = compose_train("model=tiny", "data.img_size=224")
    with pytest.raises(ConfigError, match=r"^data.img_size=224 differs from model.img_size=64"):
        validate_train_config(cfg, check_data=False)


def test_bad_pos_embed_and_decoder(compose_train):
    with pytest.raises(ConfigError, match=r"^model.pos_embed='rope': expected cosine or RoPE<base>"):
        validate_train_config(compose_train("model.pos_embed=rope"), check_data=False)
    with pytest.raises(ConfigError, match=r"^model.decoder='concat': expected one of cross, cat, mae$"):
        validate_train_config(compose_train("model.decoder=concat"), check_data=False)


def test_bad_schedule(compose_train):
    with pytest.raises(
        ConfigError, match=r"^optim.epochs=10: expected the cosine horizon > optim.warmup_epochs=40"
    ):
        validate_train_config(compose_train("optim.epochs=10"), check_data=False)


def test_checks_depend_on_the_task(compose_train, monkeypatch):
    """The pretraining checks (mask ratio, data size = model size) belong to pretraining: a task that registers
    none is not held to them, and a target that is no known task is refused."""
    from croco.tasks import checks

    cfg = compose_train("model=tiny", "data.img_size=96", "masking.ratio=1.5")
    with pytest.raises(ConfigError, match=r"^masking.ratio=1.5"):
        validate_train_config(cfg, check_data=False)
    cfg.task._target_ = "croco.tasks.some_finetune.FinetuneTask"
    with pytest.raises(ConfigError, match=r"^task._target_='croco.tasks.some_finetune.FinetuneTask': not a task; "
                                          r"allowed: croco.tasks.pretrain.PretrainTask"):  # fmt: skip
        validate_train_config(cfg, check_data=False)
    monkeypatch.setitem(checks.TASK_CHECKS, "croco.tasks.some_finetune.FinetuneTask", ())
    validate_train_config(cfg, check_data=False)  # other sizes and no masking: fine for that task
    cfg.model.img_size = 100  # the shared model checks still apply
    with pytest.raises(ConfigError, match=r"^model.img_size=100: not divisible by model.patch_size=8"):
        validate_train_config(cfg, check_data=False)


def test_task_group_selects_the_lightning_module(compose_train):
    cfg = compose_train("experiment=smoke")
    assert cfg.task._target_ == "croco.tasks.pretrain.PretrainTask"
    assert dict(cfg.task.model) == dict(cfg.model) and cfg.task.mask_seed == cfg.seed
    assert set(group_options(CONF_DIR, "task")) >= {"pretrain"}


def test_embedded_data_generate_through_a_callable_from_the_config(compose_train, tmp_path):
    """The data module gets a ready-made callable (a partial of the embedded generator) and never imports
    croco.synth itself."""
    import functools

    from croco.synth.pipeline import generate_pairs

    cfg = compose_train("experiment=smoke")
    datamodule = instantiate(cfg.data)
    generate = datamodule.generate_if_missing
    assert isinstance(generate, functools.partial) and generate.func is generate_pairs
    assert generate.keywords["pairs"] == cfg.data.generate_if_missing.pairs
    assert compose_train("data=shards").data.generate_if_missing is None


def test_selfpairs_experiment_makes_its_two_folders_in_turn(compose_train):
    """experiment=crossview_selfpairs: data/crossview from the shared generator, its self-pairs from their own."""
    import functools

    from croco.importers.selfpairs import generate_selfpairs
    from croco.synth.pipeline import generate_pairs

    cfg = compose_train("experiment=crossview_selfpairs")
    datamodule = instantiate(cfg.data)
    self_pairs, pairs = datamodule.sources
    data_dir = Path(cfg.paths.data_dir)
    assert (self_pairs.path, pairs.path) == (data_dir / "crossview_self", data_dir / "crossview")
    assert isinstance(self_pairs.generate, functools.partial) and self_pairs.generate.func is generate_selfpairs
    assert Path(self_pairs.generate.keywords["input"]) == pairs.path and pairs.generate is None
    assert datamodule.generate_if_missing.func is generate_pairs
    assert datamodule.generate_if_missing.keywords["pairs"] == compose_train("experiment=crossview_cpu").data.generate_if_missing.pairs


@pytest.mark.parametrize("data", ["habitat_release", "crops"])
def test_missing_data_folder_without_generation(compose_train, data, tmp_path):
    cfg = compose_train(f"data={data}")
    with pytest.raises(ConfigError) as err:
        validate_train_config(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("data.sources[0].path: ") and f"{tmp_path}/data/{data}" in message
    assert "does not exist" in message and "generate or import" in message


def test_unknown_preset_is_one_line_with_the_options():
    with pytest.raises(ConfigError) as err:
        check_group_choices(["experiment=smoke", "model=vit_huge"], CONF_DIR)
    assert str(err.value) == (
        "model=vit_huge: unknown model option; allowed: " + ", ".join(group_options(CONF_DIR, "model"))
    )
    with pytest.raises(ConfigError, match=r"^trainer=tpu: unknown trainer option; allowed: .*ddp_sim"):
        check_group_choices(["trainer=cpu,tpu"], CONF_DIR)  # every option of a sweep is checked
    check_group_choices(
        ["model=tiny", "masking.ratio=0.5", "logger=[csv,wandb]", "experiment=glob(*)"], CONF_DIR
    )


def test_train_py_reports_config_errors_in_one_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "train.py", "model=vit_huge"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: model=vit_huge: unknown model option; allowed: " + ", ".join(group_options(CONF_DIR, "model"))
    ]
    run = subprocess.run(
        [sys.executable, "train.py", "masking.ratio=1.5", f"paths.root_dir={tmp_path}", "logger=none"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert (
        run.stderr.strip().splitlines()[-1].startswith("error: masking.ratio=1.5: expected a number strictly")
    )


# ------------------------------------------------------------------------------------------------ targets
def test_foreign_targets_are_refused_in_one_line():
    with pytest.raises(InstantiationError) as err:
        instantiate(OmegaConf.create({"_target_": "os.system", "_args_": ["echo pwned"]}))
    assert str(err.value) == (
        "_target_='os.system': target not allowed; allowed prefixes: croco., lightning.pytorch., torch.optim."
    )
    nested = OmegaConf.create({"trainer": {"_target_": "lightning.pytorch.Trainer",
                                           "plugins": [{"_target_": "subprocess.run"}]}})  # fmt: skip
    with pytest.raises(InstantiationError, match=r"^trainer.plugins\[0\]._target_='subprocess.run'"):
        instantiate(nested.trainer)
    with pytest.raises(InstantiationError, match="builtins.eval"):
        instantiate(OmegaConf.create({"_target_": "croco.tasks.callbacks.ThroughputMonitor"}),
                    extra={"_target_": "builtins.eval"})  # fmt: skip


def test_allowed_targets_are_built():
    opt = instantiate(
        {"_target_": "torch.optim.SGD", "lr": 0.1, "_convert_": "all"},
        params=[__import__("torch").zeros(1, requires_grad=True)],
    )
    assert type(opt).__name__ == "SGD"
    check_targets(OmegaConf.load(CONF_DIR / "callbacks" / "default.yaml"))


# ------------------------------------------------------------------------------------------------ resolvers
def test_cpu_precision_follows_the_bf16_flags():
    from croco.utils.hardware import cpu_supports_fast_bf16, default_precision

    assert cpu_supports_fast_bf16(frozenset({"avx2", "amx_bf16"}))
    assert cpu_supports_fast_bf16(frozenset({"avx512f", "avx512_bf16"}))
    assert not cpu_supports_fast_bf16(frozenset({"avx2", "avx512f"}))
    expected = "bf16-mixed" if cpu_supports_fast_bf16() else "32-true"
    assert default_precision("cpu") == expected
    with pytest.raises(ValueError, match="trainer.accelerator='tpu'"):
        default_precision("tpu")


def test_wandb_key_detection(tmp_path):
    assert wandb_api_key_configured({"WANDB_API_KEY": "k"}, netrc_path=str(tmp_path / "none"))
    assert not wandb_api_key_configured({}, netrc_path=str(tmp_path / "none"))
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    assert wandb_api_key_configured({}, netrc_path=str(netrc))
    assert not wandb_api_key_configured(
        {"WANDB_BASE_URL": "https://wandb.example.org"}, netrc_path=str(netrc)
    )


def test_run_names():
    assert run_name_from_overrides("smoke", []) == "smoke"
    assert run_name_from_overrides(None, ["trainer.devices=8", "logger=csv", "ckpt_path=null"]) == "train"
    name = run_name_from_overrides("smoke", ["masking.ratio=0.5", "experiment=smoke", "data.overlap_min=0.2",
                                             "data.num_workers=8", "+trainer.profiler=simple"])  # fmt: skip
    assert name == "smoke/data.overlap_min=0.2_masking.ratio=0.5"
    long_value = run_name_from_overrides(
        "x", [f"data.sources=[{{path: /a/{'b' * 300}}}]", "masking.ratio=0.5"]
    )
    assert long_value.startswith("x/data.sources=") and long_value.endswith("_masking.ratio=0.5")
    assert len(long_value) == len("x/data.sources=12345678_masking.ratio=0.5")
    many = run_name_from_overrides("x", [f"data.key{i}=value{i}" for i in range(60)])
    assert len(many) == 2 + 200 and "/" not in many[2:]


def test_sweep_group_and_run_names_in_a_multirun():
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="train"):
        cfg = compose("train", overrides=["experiment=smoke", "masking.ratio=0.5", "trainer.devices=2"],
                      return_hydra_config=True)  # fmt: skip
    with read_write(cfg.hydra):
        cfg.hydra.sweep.dir = "logs/multiruns/2026-01-01_00-00"
    HydraConfig.instance().set_config(cfg)
    assert cfg.logger.wandb.group is None  # a single run has no group
    assert cfg.run_name == "smoke/masking.ratio=0.5"  # trainer.devices does not change what is learnt
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    assert cfg.logger.wandb.group == "smoke-2026-01-01_00-00"


@pytest.mark.parametrize("debug", ["limit", "overfit"])
def test_debug_runs_never_share_the_real_runs_folder(compose_train, debug):
    real = compose_train("experiment=smoke")
    trial = compose_train("experiment=smoke", f"debug={debug}")
    assert trial.run_name == f"debug/{real.run_name}" and trial.paths.ckpt_dir != real.paths.ckpt_dir


def test_multirun_with_subprocess_ddp_is_refused_but_spawn_and_slurm_pass(monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="train"):
        ddp = compose("train", overrides=["experiment=smoke", "trainer=ddp", "trainer.devices=2"],
                      return_hydra_config=True)  # fmt: skip
        spawn = compose("train", overrides=["experiment=smoke", "trainer=ddp_sim"], return_hydra_config=True)
    with read_write(ddp.hydra):
        ddp.hydra.mode = RunMode.RUN
    HydraConfig.instance().set_config(ddp)
    validate_train_config(ddp, check_data=False)  # a single run: Lightning relaunches only this job
    for cfg in (ddp, spawn):
        with read_write(cfg.hydra):
            cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(ddp)
    with pytest.raises(ConfigError, match=r"trainer.strategy: subprocess DDP on 2 devices inside a multirun"):
        validate_train_config(ddp, check_data=False)
    monkeypatch.setenv("SLURM_PROCID", "0")  # under SLURM each rank is its own task: nothing is relaunched
    validate_train_config(ddp, check_data=False)
    monkeypatch.delenv("SLURM_PROCID")
    HydraConfig.instance().set_config(spawn)
    validate_train_config(spawn, check_data=False)
    HydraConfig.instance().cfg = None  # leave no multirun state to the tests that follow
