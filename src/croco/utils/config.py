"""Startup checks of a composed training config: one-line errors that name the key and the allowed values.

Typos and impossible combinations otherwise surface minutes later, deep inside model or data code, as a
shape mismatch or a stack trace. ``validate_train_config`` runs before anything is built; ``check_group_choices``
runs on the command line before Hydra composes, so an unknown preset (``model=vit_huge``) is reported in one
line with the presets that exist.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = [
    "CONF_DIR",
    "ConfigError",
    "check_group_choices",
    "exit_on_unknown_choices",
    "group_options",
    "model_preset",
    "validate_train_config",
]

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"  # the Hydra configs of the repository


class ConfigError(ValueError):
    """A config value that cannot work; the one-line message names the key, the value and what is allowed."""


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, ListConfig | list | tuple):
        if len(value) != 2:
            raise ConfigError(f"expected an int or [height, width], got {list(value)}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _check_masking(cfg: DictConfig) -> None:
    ratio = _get(cfg, "masking.ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 < float(ratio) < 1.0:
        raise ConfigError(f"masking.ratio={ratio!r}: expected a number strictly between 0 and 1 (e.g. 0.9)")


def _check_model(cfg: DictConfig) -> None:
    model = _get(cfg, "model")
    if model is None:
        raise ConfigError("model: no model preset selected; choose one with model=<preset>")
    patch = _get(cfg, "model.patch_size", 16)
    img = _get(cfg, "model.img_size", 224)
    if not isinstance(patch, int) or patch <= 0:
        raise ConfigError(f"model.patch_size={patch!r}: expected a positive integer (e.g. 16)")
    try:
        h, w = _pair(img)
    except (ConfigError, TypeError, ValueError):
        raise ConfigError(f"model.img_size={img!r}: expected an int or [height, width]") from None
    if h % patch or w % patch or h <= 0 or w <= 0:
        raise ConfigError(
            f"model.img_size={img}: not divisible by model.patch_size={patch}; allowed: positive multiples of "
            f"{patch} (e.g. {max(patch, round(h / patch) * patch)})"
        )
    decoder = _get(cfg, "model.decoder", "cross")
    if decoder not in ("cross", "cat"):
        raise ConfigError(f"model.decoder={decoder!r}: expected one of cross, cat")
    pos = _get(cfg, "model.pos_embed", "cosine")
    if pos != "cosine" and not re.fullmatch(r"RoPE\d+(\.\d+)?", str(pos)):
        raise ConfigError(f"model.pos_embed={pos!r}: expected cosine or RoPE<base> (e.g. RoPE100)")
    ratio = _get(cfg, "masking.ratio")
    if isinstance(ratio, int | float) and int(ratio * (h // patch) * (w // patch)) < 1:
        raise ConfigError(
            f"masking.ratio={ratio}: masks no patch of the {h // patch}x{w // patch} grid; allowed: at least "
            f"{1 / ((h // patch) * (w // patch)):.4f}"
        )
    data_size = _get(cfg, "data.img_size")
    if data_size is not None and _pair(data_size) != (h, w):
        raise ConfigError(
            f"data.img_size={data_size} differs from model.img_size={img}; allowed: the same size as the model"
        )


def _check_optim(cfg: DictConfig) -> None:
    optim = _get(cfg, "optim")
    if optim is None:
        return
    warmup, epochs = _get(cfg, "optim.warmup_epochs", 0), _get(cfg, "optim.epochs")
    if warmup is None or warmup < 0:
        raise ConfigError(f"optim.warmup_epochs={warmup!r}: expected a number >= 0")
    if epochs is None or epochs <= warmup:
        raise ConfigError(
            f"optim.epochs={epochs!r}: expected the cosine horizon > optim.warmup_epochs={warmup}"
        )
    for key in ("blr", "weight_decay", "min_lr"):
        value = _get(cfg, f"optim.{key}", 0.0)
        if value is None or value < 0:
            raise ConfigError(f"optim.{key}={value!r}: expected a number >= 0")
    lr = _get(cfg, "optim.lr")
    if lr is not None and lr <= 0:
        raise ConfigError(
            f"optim.lr={lr!r}: expected null (lr = blr * effective batch / 256) or a number > 0"
        )
    clip = _get(cfg, "optim.clip_grad")
    if clip is not None and clip <= 0:
        raise ConfigError(f"optim.clip_grad={clip!r}: expected null (no clipping) or a max norm > 0")


def _check_data_folders(cfg: DictConfig) -> None:
    """Folders that must already hold shards: all sources when nothing may generate them."""
    if _get(cfg, "data.generate_if_missing") is not None:
        return
    from croco.data.shards import ShardError, list_shards

    for i, source in enumerate(_get(cfg, "data.sources") or []):
        path = source.get("path") if isinstance(source, DictConfig | dict) else source
        try:
            list_shards(path)
        except ShardError as e:
            raise ConfigError(
                f"data.sources[{i}].path: {e} (data.generate_if_missing is null: generate or import the data first)"
            ) from None


def _relaunches_script(strategy: Any) -> bool:
    """Whether a strategy starts its ranks by re-running the command line (Lightning's subprocess DDP)."""
    if isinstance(strategy, str):
        return strategy.startswith("ddp") and "spawn" not in strategy and "fork" not in strategy
    if isinstance(strategy, DictConfig | dict):
        target = str(strategy.get("_target_", ""))
        return target.endswith("DDPStrategy") and strategy.get("start_method", "popen") == "popen"
    return False


def _check_launch(cfg: DictConfig, environ: Mapping[str, str] = os.environ) -> None:
    """A local multirun must not use subprocess DDP: every rank would re-run the whole sweep (hydra#2070)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or "SLURM_PROCID" in environ:
        return
    devices, nodes = _get(cfg, "trainer.devices", 1), _get(cfg, "trainer.num_nodes", 1)
    if not (isinstance(devices, int) and isinstance(nodes, int)) or devices * nodes <= 1:
        return
    if _relaunches_script(_get(cfg, "trainer.strategy")):
        raise ConfigError(
            f"trainer.strategy: subprocess DDP on {devices * nodes} devices inside a multirun would relaunch the whole "
            "sweep from every rank; allowed: hydra/launcher=slurm (SLURM starts one task per GPU) or "
            "trainer.strategy=ddp_spawn"
        )


def validate_train_config(cfg: DictConfig, *, check_data: bool = True) -> None:
    """All startup checks; raises :class:`ConfigError` with a one-line message at the first problem."""
    _check_masking(cfg)
    _check_model(cfg)
    _check_optim(cfg)
    _check_launch(cfg)
    if check_data:
        _check_data_folders(cfg)


# ------------------------------------------------------------------------------------------ CLI group choices
def group_options(conf_dir: str | Path, group: str) -> list[str]:
    """The options of a config group: the ``*.yaml`` names in ``conf/<group>/``."""
    return sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml"))


_CHOICE = re.compile(r"^(?P<prefix>[+~]{0,2})(?P<group>[A-Za-z_][\w/]*)(@[\w.]+)?=(?P<value>.*)$")


def check_group_choices(argv: Sequence[str], conf_dir: str | Path) -> None:
    """Reject ``group=option`` command-line overrides whose option has no ``conf/<group>/<option>.yaml``.

    Sweeps (``model=a,b``) check every option; lists and functions (``glob(*)``, ``[a,b]``) are left to Hydra.
    """
    conf_dir = Path(conf_dir)
    for arg in argv:
        match = _CHOICE.match(arg)
        if not match or match["prefix"].startswith("~"):
            continue
        group, value = match["group"], match["value"].strip()
        if group.startswith("hydra/"):  # launchers and sweepers also come from installed Hydra plugins
            continue
        if not (conf_dir / group).is_dir() or value in ("", "null") or re.search(r"[\[\]()${}]", value):
            continue
        options = group_options(conf_dir, group)
        for option in (v.strip().strip("'\"") for v in value.split(",")):
            if option and option != "null" and option not in options:
                raise ConfigError(f"{group}={option}: unknown {group} option; allowed: {', '.join(options)}")


def exit_on_unknown_choices(argv: Sequence[str], conf_dir: str | Path = CONF_DIR) -> None:
    """For the Hydra entry points: refuse unknown ``group=option`` overrides before Hydra starts, with one line
    on stderr and exit status 2 (Hydra's own message is a long traceback-like block)."""
    try:
        check_group_choices(argv, conf_dir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def model_preset(name: str, conf_dir: str | Path = CONF_DIR) -> dict[str, Any]:
    """The CroCoNet keyword arguments of the model preset ``conf/model/<name>.yaml`` (for code outside Hydra)."""
    path = Path(conf_dir) / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"model={name}: unknown model option; allowed: {', '.join(group_options(conf_dir, 'model'))}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
