"""Start-up checks of a composed training config: one-line errors that name the key and the allowed values.

Typos and impossible combinations otherwise surface minutes later, deep inside model or data code, as a shape
mismatch or a stack trace. ``validate_train_config`` runs before anything is built. Checks shared by every task
(keys and values, model preset, optimiser recipe, launch, checkpoint files, data folders, accelerators) run
for all; a task adds its own through ``TASK_CHECKS``, keyed by its ``task._target_`` (pretraining checks the
mask ratio, and that the data size equals the model size, which a fine-tuning task need not require).

Keys nothing reads are refused with the nearest valid key (``masking.ratoi: unknown key; did you mean
masking.ratio?``), see :func:`check_keys`: what a node may hold is what reads it, the constructor of its
``_target_`` or, for the plain groups, the keys of their files and the code that reads them. What to do about
each error: docs/troubleshooting.md.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import re
import types
import typing
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from croco.data.index import check_sources
from croco.data.shards import ShardError
from croco.models.checkpoints import (
    CheckpointError,
    check_checkpoint_file,
    check_croco_kwargs,
    croco_kwarg_names,
)
from croco.models.croco import DECODERS
from croco.models.masking import check_mask_ratio, num_masked
from croco.tasks.optim import OptimRecipe
from croco.utils.config import ConfigError, entry_config, group_keys, unknown_key_error
from croco.utils.instantiate import is_allowed_target
from croco.utils.sizes import as_hw

__all__ = [
    "FINETUNE_DEFAULTS",
    "TASK_CHECKS",
    "check_accelerator",
    "check_keys",
    "check_missing_values",
    "check_resume_file",
    "finetune_settings",
    "validate_train_config",
]

Check = Callable[[DictConfig], None]


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


def _hw(cfg: DictConfig, key: str, default: Any = None) -> tuple[int, int]:
    try:
        return as_hw(_get(cfg, key, default), key)
    except ValueError as e:
        raise ConfigError(str(e)) from None


# ------------------------------------------------------------------------------------------ keys and values
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
"""Keys Hydra's ``instantiate`` reads in any node with a ``_target_``."""

MODEL_HINTS = {"mask_ratio": "masking.ratio"}
"""Keys users put in the wrong group: the message names where they belong."""


def plain_groups() -> dict[str, set[str]]:
    """The groups without a ``_target_`` and the keys their readers take: the model preset is CroCoNet keyword
    arguments (the mask ratio aside: ``masking.ratio``), the optimiser recipe is ``OptimRecipe``, ``finetune``
    is :data:`FINETUNE_DEFAULTS`; ``masking`` and ``paths`` are what their files define."""
    return {
        "model": set(croco_kwarg_names()) - {"mask_ratio"},
        "optim": {f.name for f in dataclasses.fields(OptimRecipe)},
        "finetune": set(FINETUNE_DEFAULTS),
        "masking": group_keys("masking"),
        "paths": group_keys("paths"),
    }


def _signature_of(obj: Any) -> tuple[set[str], bool, dict[str, Any]]:
    """(keyword names, whether it takes ``**kwargs``, type hints) of a callable; a class of this project that
    takes ``**kwargs`` passes them to its base class (``RunCheckpoint`` -> ``ModelCheckpoint``), whose
    names are then added."""
    names: set[str] = set()
    hints: dict[str, Any] = {}
    chain = [obj]
    if inspect.isclass(obj):
        chain = [c for c in obj.__mro__ if "__init__" in vars(c) and c is not object]
    for item in chain:
        try:
            params = inspect.signature(item).parameters
        except (TypeError, ValueError):
            return names, True, hints
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        try:
            found = typing.get_type_hints(item.__init__ if inspect.isclass(item) else item)
        except Exception:  # noqa: BLE001 - annotations that do not resolve: no type checks, names still are
            found = {}
        hints = {**found, **hints}
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
        if not takes_any:
            return names, False, hints
        if not str(getattr(item, "__module__", "")).startswith("croco."):
            return names, True, hints  # a library's **kwargs go elsewhere (wandb.init, DDP): anything goes
    return names, True, hints


@functools.cache
def target_signature(target: str) -> tuple[set[str], bool, dict[str, Any]] | None:
    """(keyword names, takes any keyword, type hints) of an allowed ``_target_``; None when it does not import
    (``instantiate`` reports that, in one line too)."""
    if not is_allowed_target(target):
        return None
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return _signature_of(obj)


_DESCRIBE = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _accepts(hint: Any, value: Any) -> bool | None:
    """Whether ``value`` (a plain value, or a container) fits a type hint; None when the hint is not a simple
    one (a class, a generic container): only clear mismatches are reported."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_accepts(arg, value) for arg in typing.get_args(hint)]
        return True if any(results) else None if None in results else False
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in typing.get_args(hint))
    if hint not in _DESCRIBE:
        return None
    if isinstance(value, DictConfig | ListConfig):
        return False
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _flat(hint: Any) -> list[Any]:
    """The members of a (nested) union, literals spread into their values."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return list(typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(hint) for member in _flat(arg)]
    return [hint]


def _describe(hint: Any) -> str:
    """'an integer or null', 'one of 32-true, bf16-mixed, ... or null'."""
    members = _flat(hint)
    literals = [str(m) for m in members if not isinstance(m, type) and typing.get_origin(m) is None]
    kinds = [_DESCRIBE.get(m, getattr(m, "__name__", str(m))) for m in members if m not in literals]
    kinds = [k for k in kinds if k not in literals]
    parts = [f"one of {', '.join(dict.fromkeys(literals))}"] if literals else []
    return " or ".join(parts + list(dict.fromkeys(kinds)))


def _children(node: DictConfig | ListConfig, where: str) -> Iterator[tuple[str, Any, Any]]:
    """(full key, raw node, key) of the children of a container, interpolations included (unresolved)."""
    if isinstance(node, DictConfig):
        for key in node:
            yield f"{where}.{key}" if where else str(key), node._get_node(key), key
    else:
        for i in range(len(node)):
            yield f"{where}[{i}]", node._get_node(i), i


def _check_target_node(node: DictConfig, where: str) -> None:
    """The keys of a ``_target_`` node are its target's keyword arguments (or Hydra's); plain values whose
    target annotates a simple type (numbers, strings, booleans, null, literals) must have it."""
    found = target_signature(str(node.get("_target_")))
    if found is None:
        return
    names, takes_any, hints = found
    for key in node:
        key = str(key)
        if key in HYDRA_KEYS:
            continue
        if key not in names and not takes_any:
            raise unknown_key_error(key, names | set(HYDRA_KEYS), prefix=f"{where}.")
        raw = node._get_node(key)
        if key not in hints or raw is None or raw._is_interpolation():
            continue  # an interpolated value is checked where it is defined
        value = raw if isinstance(raw, DictConfig | ListConfig) else raw._value()
        if OmegaConf.is_missing(node, key):
            continue
        if _accepts(hints[key], value) is False:
            shown = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
            raise ConfigError(f"{where}.{key}={shown!r}: expected {_describe(hints[key])}")


def _walk_targets(node: Any, where: str) -> None:
    if isinstance(node, DictConfig) and "_target_" in node:
        _check_target_node(node, where)
    if isinstance(node, DictConfig | ListConfig):
        for path, raw, _ in _children(node, where):
            if isinstance(raw, DictConfig | ListConfig) and not raw._is_interpolation():
                _walk_targets(raw, path)


def check_keys(cfg: DictConfig) -> None:
    """Refuse keys that nothing reads (typos such as ``+masking.ratoi=0.5``, silently ignored otherwise) and
    plain values of the wrong type, in one line naming the key, with the nearest valid key.

    Allowed: at the top level the keys of ``conf/train.yaml`` and its groups; in a plain group the keys of
    :func:`plain_groups`; in a node with a ``_target_`` (task, data, trainer, each callback and logger, the
    data generator, strategies, plugins) its target's keyword arguments and Hydra's own keys, anything when it
    takes ``**kwargs``."""
    own, groups = entry_config("train")
    allowed = own | groups
    plain = plain_groups()
    for path, raw, key in _children(cfg, ""):
        if key not in allowed:
            raise unknown_key_error(str(key), allowed - {"defaults"})
        if key in plain and isinstance(raw, DictConfig):
            for sub in raw:
                if sub not in plain[key]:
                    hints = MODEL_HINTS if key == "model" else None
                    raise unknown_key_error(str(sub), plain[key], f"{key}.", hints)
        elif key != "hydra" and isinstance(raw, DictConfig | ListConfig) and not raw._is_interpolation():
            _walk_targets(raw, path)
    seed = _get(cfg, "seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"seed={seed!r}: expected an integer or null")


def check_missing_values(cfg: DictConfig) -> None:
    """A mandatory value left at ``???`` (e.g. ``task.num_classes`` of segmentation) is named before anything
    is built."""
    def walk(node: DictConfig | ListConfig, where: str) -> None:
        for path, raw, key in _children(node, where):
            if path == "hydra" or raw is None or raw._is_interpolation():
                continue  # Hydra's own node; an interpolation's target is checked where it is defined
            if raw._is_missing():
                raise ConfigError(f"{path}: missing value (???); set it, e.g. {path}=<value> on the command "
                                  "line")  # fmt: skip
            if isinstance(raw, DictConfig | ListConfig):
                walk(raw, path)

    walk(cfg, "")


# ------------------------------------------------------------------------------------------ every task
def check_model(cfg: DictConfig) -> None:
    if _get(cfg, "model") is None:
        raise ConfigError("model: no model preset selected; choose one with model=<preset>")
    patch = _get(cfg, "model.patch_size", 16)
    if isinstance(patch, bool) or not isinstance(patch, int) or patch <= 0:
        raise ConfigError(f"model.patch_size={patch!r}: expected a positive integer (e.g. 16)")
    h, w = _hw(cfg, "model.img_size", 224)
    if h % patch or w % patch:
        raise ConfigError(
            f"model.img_size={_get(cfg, 'model.img_size')}: not divisible by model.patch_size={patch}; allowed: "
            f"positive multiples of {patch} (e.g. {max(patch, round(h / patch) * patch)})"
        )
    decoder = _get(cfg, "model.decoder", "cross")
    if decoder not in DECODERS:
        raise ConfigError(f"model.decoder={decoder!r}: expected one of {', '.join(DECODERS)}")
    pos = _get(cfg, "model.pos_embed", "cosine")
    if pos != "cosine" and not re.fullmatch(r"RoPE\d+(\.\d+)?", str(pos)):
        raise ConfigError(f"model.pos_embed={pos!r}: expected cosine or RoPE<base> (e.g. RoPE100)")
    try:  # the rest as for a checkpoint's arguments: types, head counts, a network of a sane size
        check_croco_kwargs(OmegaConf.to_container(_get(cfg, "model"), resolve=True), "model")
    except CheckpointError as e:
        raise ConfigError(str(e)) from None


def check_optim(cfg: DictConfig) -> None:
    """The recipe's own checks (``OptimRecipe``), reported as config errors."""
    optim = _get(cfg, "optim")
    if optim is None:
        return
    try:
        OptimRecipe.from_mapping(OmegaConf.to_container(optim, resolve=True))
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def check_data_folders(cfg: DictConfig) -> None:
    """Folders that must already hold data, when nothing may generate them: every pretraining source (shards),
    a downstream dataset's root."""
    if _get(cfg, "data.generate_if_missing") is not None:
        return
    root = _get(cfg, "data.root")
    if _get(cfg, "data.sources") is None:
        if root is not None and not os.path.isdir(root):
            raise ConfigError(f"data.root={root}: no such folder; put the dataset there (docs/downstream.md) or "
                              "set data.root")  # fmt: skip
        return
    try:
        check_sources(_get(cfg, "data.sources") or [])
    except (ShardError, ValueError) as e:
        raise ConfigError(f"{e} (data.generate_if_missing is null: generate or import the data first)") from None


def _accelerators() -> list[str]:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found.append(f"gpu ({torch.cuda.device_count()} CUDA device(s))")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_accelerator(cfg: DictConfig, available: list[str] | None = None) -> None:
    """``trainer=gpu`` (``trainer.accelerator`` gpu, cuda or mps) needs that device on this machine; more
    GPUs than it has are named too. ``available``: the accelerators found (tests pass their own)."""
    available = _accelerators() if available is None else available
    accelerator = str(_get(cfg, "trainer.accelerator", "auto")).lower()
    kinds = {a.split()[0] for a in available}
    wanted = {"gpu": {"gpu", "mps"}, "cuda": {"gpu"}, "mps": {"mps"}}.get(accelerator)
    if wanted is None or wanted & kinds:
        devices = _get(cfg, "trainer.devices")
        count = re.search(r"gpu \((\d+) ", " ".join(available))
        if accelerator in ("gpu", "cuda") and count and isinstance(devices, int) and devices > int(count[1]):
            raise ConfigError(f"trainer.devices={devices}: this machine has {count[1]} GPU(s); allowed: at "
                              f"most {count[1]}, or trainer.devices=auto")  # fmt: skip
        return
    device = "MPS device" if accelerator == "mps" else "GPU"
    raise ConfigError(
        f"trainer.accelerator={accelerator}: no {device} on this machine (accelerators here: "
        f"{', '.join(available)}); use trainer=cpu, or trainer.accelerator=auto to take a GPU when there "
        "is one"
    )


def check_resume_file(cfg: DictConfig) -> None:
    """An explicit ``ckpt_path`` file must be a complete PyTorch checkpoint: cheap, only its zip directory is
    read (a truncated file has none); the full load is the trainer's. ``last`` is resolved, and its file
    checked, when the fit starts (``croco.tasks.training``)."""
    path = _get(cfg, "ckpt_path")
    if path is None or str(path) == "last":
        return
    fresh = "start fresh with ckpt_path=null (or resume the run's newest with ckpt_path=last)"
    if not os.path.isfile(path):
        raise ConfigError(f"ckpt_path={path}: no such checkpoint file; allowed: null, last, or a file path")
    try:
        with zipfile.ZipFile(path) as archive:
            complete = any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError) as error:
        raise ConfigError(f"ckpt_path={path}: truncated or not a checkpoint ({type(error).__name__}); {fresh}"
                          ) from None  # fmt: skip
    if not complete:
        raise ConfigError(f"ckpt_path={path}: truncated or not a checkpoint (no data.pkl); {fresh}")


def _relaunches_script(strategy: Any) -> bool:
    """Whether a strategy starts its ranks by re-running the command line (Lightning's subprocess DDP)."""
    if isinstance(strategy, str):
        return strategy.startswith("ddp") and "spawn" not in strategy and "fork" not in strategy
    if isinstance(strategy, DictConfig | dict):
        target = str(strategy.get("_target_", ""))
        return target.endswith("DDPStrategy") and strategy.get("start_method", "popen") == "popen"
    return False


def check_launch(cfg: DictConfig, environ: Mapping[str, str] = os.environ) -> None:
    """A local multirun must not use subprocess DDP: every rank would re-run the whole sweep
    (facebookresearch/hydra#2070)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or "SLURM_PROCID" in environ:
        return
    devices, nodes = _get(cfg, "trainer.devices", 1), _get(cfg, "trainer.num_nodes", 1)
    if not (isinstance(devices, int) and isinstance(nodes, int)) or devices * nodes <= 1:
        return
    if _relaunches_script(_get(cfg, "trainer.strategy")):
        raise ConfigError(
            f"trainer.strategy: subprocess DDP on {devices * nodes} devices inside a multirun would relaunch the "
            "whole sweep from every rank; allowed: hydra/launcher=slurm (SLURM starts one task per GPU) or "
            "trainer.strategy=ddp_spawn"
        )


# ------------------------------------------------------------------------------------------ pretraining
def check_pretraining(cfg: DictConfig) -> None:
    """The mask ratio is in (0, 1) and masks at least one patch; the data come at the model's size."""
    try:
        ratio = check_mask_ratio(_get(cfg, "masking.ratio"), "masking.ratio")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    init = _get(cfg, "task.init_from")
    if init is not None:
        if not os.path.isfile(init):
            raise ConfigError(f"task.init_from={init}: no such file; allowed: null or an official CroCo .pth "
                              "(e.g. pretrained_models/CroCo.pth)")  # fmt: skip
        _check_init_file("task.init_from", init, official_only=True)
    patch = _get(cfg, "model.patch_size", 16)
    h, w = _hw(cfg, "model.img_size", 224)
    grid = (h // patch) * (w // patch)
    if num_masked(grid, ratio) < 1:
        raise ConfigError(
            f"masking.ratio={ratio}: masks no patch of the {h // patch}x{w // patch} grid; allowed: at least "
            f"{1 / grid:.4f}"
        )
    if _get(cfg, "data.img_size") is not None and _hw(cfg, "data.img_size") != (h, w):
        raise ConfigError(
            f"data.img_size={_get(cfg, 'data.img_size')} differs from model.img_size={_get(cfg, 'model.img_size')}; "
            "allowed: the same size as the model"
        )


# ------------------------------------------------------------------------------------------ downstream
FINETUNE_DEFAULTS: dict[str, Any] = {
    "init": "scratch", "init_head": False, "init_decoder": True, "freeze": None, "drop_path": 0.0
}
"""Keys of ``conf/finetune/*.yaml``."""


def finetune_settings(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``finetune`` mapping with defaults filled in; unknown keys and bad values are one-line errors."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(FINETUNE_DEFAULTS))
    if unknown:
        raise ValueError(f"finetune: unknown key(s) {unknown}; allowed: {', '.join(FINETUNE_DEFAULTS)}")
    out = {**FINETUNE_DEFAULTS, **values}
    init = out["init"]
    if init is None or str(init) in ("", "scratch", "null"):
        out["init"] = "scratch"
    else:
        out["init"] = str(init)
    freeze_value = out["freeze"]
    if not (freeze_value is None or freeze_value == "backbone" or
            (isinstance(freeze_value, int) and not isinstance(freeze_value, bool) and freeze_value >= 0)):  # fmt: skip
        raise ValueError(f"finetune.freeze={freeze_value!r}: expected null, backbone or a number of encoder blocks")
    for key in ("init_head", "init_decoder"):
        if not isinstance(out[key], bool):
            raise ValueError(f"finetune.{key}={out[key]!r}: expected true or false")  # noqa: TRY004
    rate = out["drop_path"]
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise ValueError(f"finetune.drop_path={rate!r}: expected a rate in [0, 1)")
    out["drop_path"] = float(rate)
    return out


def check_finetune(cfg: DictConfig) -> None:
    """``finetune`` keys and values; an initialisation file must exist (read when the fit starts)."""
    try:
        settings = finetune_settings(OmegaConf.to_container(_get(cfg, "finetune", {}), resolve=True))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    init = settings["init"]
    if init != "scratch" and not os.path.isfile(init):
        raise ConfigError(f"finetune.init={init}: no such file; allowed: scratch, a Lightning .ckpt of this "
                          "project or an official CroCo .pth")  # fmt: skip
    if init != "scratch":
        _check_init_file("finetune.init", init)


def _check_init_file(key: str, path: str, official_only: bool = False) -> None:
    """The layout and CroCoNet arguments of an initialisation file, read as the fit will read them but with
    the tensors memory-mapped: a bad file is named now, not after the data are prepared."""
    try:
        check_checkpoint_file(path, official_only=official_only)
    except CheckpointError as e:
        raise ConfigError(f"{key}: {e}") from None


def _check_target(expected: str) -> Check:
    """The data give the task's ground truth; ``expected`` "kind" means the task's own ``kind`` key."""

    def check(cfg: DictConfig) -> None:
        wanted = _get(cfg, "task.kind") if expected == "kind" else expected
        target = _get(cfg, "data.target")
        if target != wanted:
            raise ConfigError(f"data.target={target!r}: the task {_get(cfg, 'task._target_')} needs "
                              f"data.target={wanted} (a downstream data config, e.g. data=dense_synthetic)")  # fmt: skip

    return check


TASK_CHECKS: dict[str, tuple[Check, ...]] = {
    "croco.tasks.pretrain.PretrainTask": (check_pretraining,),
    "croco.tasks.depth.DepthTask": (check_finetune, _check_target("depth")),
    "croco.tasks.segmentation.SegmentationTask": (check_finetune, _check_target("segmentation")),
    "croco.tasks.classification.ClassificationTask": (check_finetune, _check_target("classification")),
    "croco.tasks.stereoflow.StereoFlowTask": (check_finetune, _check_target("kind")),
    "croco.tasks.pose.PoseTask": (check_finetune, _check_target("pose")),
}
"""The checks of each task, by the ``task._target_`` that selects it (``conf/task/``)."""


def validate_train_config(cfg: DictConfig, *, check_data: bool = True) -> None:
    """All start-up checks; raises :class:`ConfigError` with a one-line message at the first problem.

    ``check_data``: also the checks of this machine's resources, its data folders and its accelerators (off
    to check a config for another machine, as the tests of the configs do)."""
    target = _get(cfg, "task._target_")
    if target not in TASK_CHECKS:
        raise ConfigError(f"task._target_={target!r}: not a task; allowed: {', '.join(TASK_CHECKS)}")
    check_missing_values(cfg)
    check_keys(cfg)
    for check in TASK_CHECKS[target]:
        check(cfg)
    check_model(cfg)
    check_optim(cfg)
    check_launch(cfg)
    check_resume_file(cfg)
    if check_data:
        check_accelerator(cfg)
        check_data_folders(cfg)
