"""Reading and writing checkpoints in the official CroCo layouts, without executing pickled code.

Three layouts exist in the wild (written by naver/croco ``pretrain.py`` and ``stereoflow/``, read by its
``demo.py``), resolved in this order:

1. ``{"model": state_dict, "croco_kwargs": {...}}`` — the released CroCo v2 files (and what we export);
2. ``{"model": ..., "args": Namespace(model="CroCoNet(enc_embed_dim=1024, ...)", ...)}`` — files written by
   the official ``pretrain.py``; the ``args.model`` string is parsed as keyword literals, never evaluated;
3. ``{"model": ...}`` alone — the released CroCo v1 file (constructor defaults).

Fine-tuned CroCo-Stereo / CroCo-Flow files carry ``args.croco_args`` (a dict) instead of the model string.
``load_backbone`` initialises a downstream network from any of these files or from a Lightning checkpoint of
this project, keeping only the parts the downstream network has.

Every reader checks the file's constructor arguments with :func:`check_croco_kwargs` (names, types, ranges,
and a network size no CroCo comes near) before building anything, so a damaged or foreign file is a one-line
:class:`CheckpointError` naming the file, never a stack trace from deep inside the model or an attempt to
allocate terabytes.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from croco.models.croco import DECODERS, CroCoNet
from croco.models.pos_embed import interpolate_pos_embed
from croco.utils.files import atomic_output

__all__ = [
    "MAX_PARAMETERS",
    "CheckpointError",
    "check_checkpoint_file",
    "check_croco_kwargs",
    "croco_kwarg_names",
    "export_official_checkpoint",
    "load_backbone",
    "load_official_checkpoint",
    "load_weights_only",
    "network_from_lightning",
    "parse_model_string",
    "read_any_checkpoint",
    "read_official_checkpoint",
    "uncompiled_state",
]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and what was expected."""


def croco_kwarg_names() -> tuple[str, ...]:
    """Constructor arguments a checkpoint may set (``norm_layer`` is code, not data)."""
    return tuple(n for n in inspect.signature(CroCoNet).parameters if n != "norm_layer")


MAX_PARAMETERS = 5_000_000_000
"""The largest network a file may describe: ~8x the largest released CroCo (ViT-L encoder + base decoder,
~0.6e9 with its buffers). Anything larger is a damaged or foreign file, refused before allocating it."""

_ROPE = re.compile(r"RoPE\d+(\.\d+)?")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def estimated_parameters(kwargs: Mapping[str, Any]) -> int:
    """Parameters plus cosine buffers of ``CroCoNet(**kwargs)`` (complete, checked arguments, ``img_size`` a
    pair), to within a few percent: patch embedding, ``(4 + 2 mlp_ratio) D^2`` per encoder block,
    ``(8 + 2 mlp_ratio) D^2`` per cross-attention decoder block (``(4 + 2 mlp_ratio) D^2`` for ``cat``),
    decoder embedding and prediction head. Python integers: no overflow whatever the sizes."""
    p, ratio = kwargs["patch_size"], kwargs["mlp_ratio"]
    enc, dec = kwargs["enc_embed_dim"], kwargs["dec_embed_dim"]
    h, w = kwargs["img_size"]
    per_dec = (8 if kwargs["decoder"] == "cross" else 4) + 2 * ratio
    total = 3 * p * p * enc + (4 + 2 * ratio) * enc * enc * kwargs["enc_depth"] + enc * dec
    total += per_dec * dec * dec * kwargs["dec_depth"] + dec * p * p * 3
    if kwargs["pos_embed"] == "cosine":
        total += (h // p) * (w // p) * (enc + dec)
    return math.ceil(total)


def _check_names(kwargs: Any, where: str) -> dict[str, Any]:
    if not isinstance(kwargs, Mapping):
        got = type(kwargs).__name__
        raise CheckpointError(f"{where}: expected a mapping of CroCoNet arguments, got {got}")
    allowed = croco_kwarg_names()
    unknown = sorted(repr(k) if not isinstance(k, str) else k for k in kwargs if k not in allowed)
    if unknown:
        raise CheckpointError(f"{where}: unknown CroCoNet argument(s) {unknown}; allowed: {', '.join(allowed)}")
    return dict(kwargs)


def check_croco_kwargs(kwargs: Any, where: str) -> dict[str, Any]:
    """Check CroCoNet keyword arguments read from a file, BEFORE anything is built, and return them (a copy).

    Names must be constructor arguments (:func:`croco_kwarg_names`); missing ones take the constructor
    defaults. Types and ranges: positive integer sizes (depths may be 0), embedding widths divisible by their
    head counts (and as the positions need: by 4 for cosine, head widths by 4 for RoPE), an image size
    divisible by the patch size, ``mask_ratio`` in (0, 1), ``mlp_ratio`` in (0, 64], ``norm_im2_in_dec`` a
    boolean, ``pos_embed`` cosine or RoPE<base>, ``decoder`` one of :data:`croco.models.croco.DECODERS`; at
    most :data:`MAX_PARAMETERS` parameters. ``where`` starts every one-line :class:`CheckpointError`: the file
    and the entry, e.g. ``ckpt.pth: croco_kwargs``, so that a bad value reads
    ``ckpt.pth: croco_kwargs.enc_depth=12.5: expected an integer >= 0``."""
    _check_names(kwargs, where)
    allowed = croco_kwarg_names()
    defaults = {n: p.default for n, p in inspect.signature(CroCoNet).parameters.items() if n in allowed}
    full = {**defaults, **kwargs}

    def bad(name: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{where}.{name}={full[name]!r}: expected {expected}")

    size = full["img_size"]
    sides = [size, size] if _is_int(size) else list(size) if isinstance(size, list | tuple) else []
    if len(sides) != 2 or not all(_is_int(s) and s > 0 for s in sides):
        raise bad("img_size", "a positive integer or a pair of them (height, width)")
    for name in ("patch_size", "enc_embed_dim", "enc_num_heads", "dec_embed_dim", "dec_num_heads"):
        if not _is_int(full[name]) or full[name] <= 0:
            raise bad(name, "a positive integer")
    for name in ("enc_depth", "dec_depth"):
        if not _is_int(full[name]) or full[name] < 0:
            raise bad(name, "an integer >= 0")
    if any(s % full["patch_size"] for s in sides):
        raise bad("img_size", f"sides divisible by patch_size={full['patch_size']}")
    ratio = full["mask_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
        raise bad("mask_ratio", "a number strictly between 0 and 1")
    mlp = full["mlp_ratio"]
    if isinstance(mlp, bool) or not isinstance(mlp, int | float) or not 0 < mlp <= 64:
        raise bad("mlp_ratio", "a number in (0, 64]")
    if not isinstance(full["norm_im2_in_dec"], bool):
        raise bad("norm_im2_in_dec", "true or false")
    pos = full["pos_embed"]
    if not isinstance(pos, str) or (pos != "cosine" and not _ROPE.fullmatch(pos)):
        raise bad("pos_embed", "cosine or RoPE<base> (e.g. RoPE100)")
    if full["decoder"] not in DECODERS:
        raise bad("decoder", f"one of {', '.join(DECODERS)}")
    for part in ("enc", "dec"):
        dim, heads = full[f"{part}_embed_dim"], full[f"{part}_num_heads"]
        if dim % heads:
            raise bad(f"{part}_embed_dim", f"a multiple of {part}_num_heads={heads}")
        if pos == "cosine" and dim % 4:
            raise bad(f"{part}_embed_dim", "a multiple of 4 (cosine positions)")
        if pos != "cosine" and (dim // heads) % 4:  # RoPE rotates head channels in pairs, per axis
            raise bad(f"{part}_embed_dim", f"{part}_num_heads={heads} x a multiple of 4 (RoPE head widths)")
    count = estimated_parameters({**full, "img_size": tuple(sides)})
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{where}: these arguments describe a network of about {count:.2g} parameters; allowed: at most "
            f"{MAX_PARAMETERS:.0e}"
        )
    return dict(kwargs)



def parse_model_string(text: str, where: str = "args.model") -> dict[str, Any]:
    """``"CroCoNet(enc_embed_dim=1024, pos_embed='RoPE100')"`` -> keyword dict, accepting literals only."""
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise CheckpointError(f"{where}: cannot parse {text!r} ({e.msg})") from None
    name = getattr(call, "func", None)
    name = getattr(name, "id", None) or getattr(name, "attr", None)
    if not isinstance(call, ast.Call) or name != "CroCoNet" or call.args:
        raise CheckpointError(f"{where}: expected 'CroCoNet(key=value, ...)' with keyword arguments, got {text!r}")
    kwargs = {}
    for kw in call.keywords:
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise CheckpointError(
                f"{where}: argument {kw.arg}={ast.unparse(kw.value)} is not a literal; only literals are accepted"
            ) from None
    return _check_names(kwargs, where)  # names only: the readers check the values (check_croco_kwargs)


# torch's weights-only unpickler: these say "a type outside the allow-list", anything else "not a checkpoint"
_REFUSED = re.compile(r"Unsupported global|unsupported GLOBAL|Trying to call|Can only (build|create)")


def _first_line(error: BaseException) -> str:
    """The telling line of a loader error (torch's weights-only errors have it after their preamble)."""
    text = str(error).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else "no message"
    return f"{type(error).__name__}: {line[:120]}"


def load_weights_only(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """``torch.load`` that never executes pickled code (tensors, containers and ``argparse.Namespace`` only);
    every failure is a one-line :class:`CheckpointError` naming the file. ``mmap``: map the tensors of a zip
    file instead of reading them (cheap look at a large file's metadata; ignored for legacy files)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {'a folder, not a' if path.is_dir() else 'no such'} checkpoint file")
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive, or (legacy) a pickle
        what = "an empty file" if not head else "neither a zip archive nor a pickle"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({what})")
    try:
        mmap = mmap and zipfile.is_zipfile(path)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if not _REFUSED.search(str(e)):
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: the file holds pickled objects other than tensors and plain containers{what}"
        ) from None
    except Exception as e:  # noqa: BLE001 - arbitrary bytes fail anywhere in the loader (KeyError, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None


def _check_mapping(state: Any, where: str) -> Mapping[Any, Any]:
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: expected a state dict of tensors, not {type(state).__name__}")
    return state


def _check_state(state: Any, where: str) -> dict[str, torch.Tensor]:
    """A state dict: tensors under string keys (anything else would fail later, far from the file)."""
    _check_mapping(state, where)
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return dict(state)


def _official_layout(ckpt: Any, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict (official CroCo layout)")
    if "croco_kwargs" in ckpt:
        kwargs = check_croco_kwargs(ckpt["croco_kwargs"], f"{path}: croco_kwargs")
    elif isinstance(getattr(ckpt.get("args"), "croco_args", None), dict):  # CroCo-Stereo / CroCo-Flow
        kwargs = check_croco_kwargs(ckpt["args"].croco_args, f"{path}: args.croco_args")
    elif "args" in ckpt:
        model_string = getattr(ckpt["args"], "model", None)
        if not isinstance(model_string, str):
            raise CheckpointError(f"{path}: 'args' has no 'model' string such as \"CroCoNet(...)\"")
        where = f"{path}: args.model"
        kwargs = check_croco_kwargs(parse_model_string(model_string, where), where)
    else:
        kwargs = {}
    return kwargs, _check_state(ckpt["model"], f"{path}: model")


def read_official_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return (CroCoNet kwargs, state_dict) of an official-layout file; the kwargs are checked
    (:func:`check_croco_kwargs`)."""
    path = Path(path)
    return _official_layout(load_weights_only(path), path)


def load_official_checkpoint(path: str | os.PathLike, **overrides: Any) -> CroCoNet:
    """Build the CroCoNet a file describes and load its weights strictly.

    ``overrides`` change constructor arguments, e.g. ``img_size=(352, 704)``: cosine buffers are then
    bicubically resampled from the checkpoint's grid (the official ``interpolate_pos_embed``)."""
    kwargs, state = read_official_checkpoint(path)
    if overrides:  # the file's arguments are checked; the combination is new
        kwargs.update(_check_names(overrides, "overrides"))
        check_croco_kwargs(kwargs, f"{path}: overrides")
    model = CroCoNet(**kwargs)
    interpolate_pos_embed(model, state)
    result = load_strict(model, state)
    if result:
        raise CheckpointError(f"{path}: weights do not match CroCoNet({_short(kwargs)}): {result}")
    return model


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Load strictly; return '' on success, else a one-line description of the mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state
              and state[k].shape != own[k].shape]  # fmt: skip
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            problems.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
    if problems:
        return "; ".join(problems)
    model.load_state_dict(state, strict=True)
    return ""


def _short(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def uncompiled_state(state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The entries of ``state`` under ``prefix`` (prefix removed), with the ``_orig_mod.`` that
    ``torch.compile``'d modules add to their keys taken out: the names of the plain network."""
    return {k[len(prefix):].replace("_orig_mod.", ""): v for k, v in state.items() if k.startswith(prefix)}


def _lightning_layout(ckpt: Any, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """(checked CroCoNet kwargs, network state: the ``net.`` entries without the prefix) of a Lightning
    checkpoint of this project; None for another layout. The kwargs: ``croco_kwargs`` or the task's
    ``hyper_parameters.model`` (and its ``mask_ratio``)."""
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return None
    where = f"{path}: state_dict"
    state = _check_state(uncompiled_state(_check_mapping(ckpt["state_dict"], where), prefix="net."), where)
    hparams = ckpt.get("hyper_parameters")
    if ckpt.get("croco_kwargs") is not None:
        kwargs = check_croco_kwargs(ckpt["croco_kwargs"], f"{path}: croco_kwargs")
    elif isinstance(hparams, dict) and hparams.get("model") is not None:
        kwargs = check_croco_kwargs(hparams["model"], f"{path}: hyper_parameters.model")
        if "mask_ratio" in hparams:  # a pretraining task's: checked with the network it builds
            check_croco_kwargs({**kwargs, "mask_ratio": hparams["mask_ratio"]}, f"{path}: hyper_parameters")
    else:
        kwargs = {}
    return kwargs, state


def network_from_lightning(ckpt: Any, path: str | os.PathLike) -> CroCoNet:
    """The CroCoNet of a loaded croco Lightning checkpoint: built from its ``model`` / ``mask_ratio``
    hyper-parameters (checked first: :func:`check_croco_kwargs`), weights from ``state_dict`` under ``net.``;
    every failure is a one-line ``CheckpointError``."""
    path = Path(path)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not isinstance(hparams.get("model"), dict):
        raise CheckpointError(f"{path}: no 'hyper_parameters.model' (not a croco PretrainTask checkpoint)")
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: no 'state_dict' (not a Lightning checkpoint)")
    kwargs = check_croco_kwargs(hparams["model"], f"{path}: hyper_parameters.model")
    kwargs = {**kwargs, "mask_ratio": hparams.get("mask_ratio", 0.9)}
    kwargs = check_croco_kwargs(kwargs, f"{path}: hyper_parameters")
    _, state = _lightning_layout(ckpt, path)
    net = CroCoNet(**kwargs)
    mismatch = load_strict(net, state)
    if mismatch:
        raise CheckpointError(f"{path}: weights do not match the stored model arguments: {mismatch}")
    return net


def export_official_checkpoint(model: CroCoNet, path: str | os.PathLike) -> Path:
    """Write ``{"model", "croco_kwargs"}`` so the official tools and DUSt3R can read our weights.

    Written to a temporary file and renamed, so an interrupted export never leaves a half file."""
    if model.decoder_type != "cross":
        raise ValueError(f"decoder={model.decoder_type!r} has no official equivalent; only 'cross' can be exported")
    kwargs = {k: v for k, v in model.croco_kwargs.items() if k != "decoder"}
    state = {k: v.detach().cpu() for k, v in uncompiled_state(model.state_dict()).items()}
    with atomic_output(path) as tmp:
        torch.save({"model": state, "croco_kwargs": kwargs}, tmp)
    return Path(path)


# ------------------------------------------------------------------------------------------ downstream init
PRETRAINING_ONLY_KEYS = ("mask_token", "prediction_head.")
DECODER_KEYS = ("decoder_embed.", "dec_blocks.", "dec_norm.", "dec_view_embed")
ARCHITECTURE_KEYS = ("patch_size", "enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth",
                     "dec_num_heads", "mlp_ratio", "norm_im2_in_dec", "pos_embed", "decoder")  # fmt: skip


def read_any_checkpoint(
    path: str | os.PathLike, *, mmap: bool = False
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(CroCoNet kwargs, network state dict) of a Lightning checkpoint of this project (weights under ``net.``)
    or of an official-layout file; kwargs may be partial (official v1 files carry none: the defaults) and
    are checked (:func:`check_croco_kwargs`). ``mmap``: tensors mapped, not read (a cheap look)."""
    path = Path(path)
    ckpt = load_weights_only(path, mmap=mmap)
    lightning = _lightning_layout(ckpt, path)
    if lightning is None:
        return _official_layout(ckpt, path)
    kwargs, state = lightning
    if not state:
        raise CheckpointError(f"{path}: a Lightning checkpoint without network weights under 'net.'")
    return kwargs, state


def check_checkpoint_file(path: str | os.PathLike, *, official_only: bool = False) -> dict[str, Any]:
    """Read a checkpoint's layout and CroCoNet arguments cheaply (tensors memory-mapped), as the readers above
    would, and return the arguments: for start-up checks, so that a bad file is reported before any data are
    prepared. ``official_only``: only the official layouts (``read_official_checkpoint``)."""
    path = Path(path)
    if official_only:
        return _official_layout(load_weights_only(path, mmap=True), path)[0]
    return read_any_checkpoint(path, mmap=True)[0]


def load_backbone(
    net: torch.nn.Module, path: str | os.PathLike, with_head: bool = False, with_decoder: bool = True
) -> str:
    """Initialise the backbone of a downstream network (``croco.models.downstream``) from ``path``.

    Parts the network does not have are dropped: the mask token and the pixel prediction head always, any
    ``head.*`` of a fine-tuned file, and the decoder when ``net`` has none. Every other key must match: a
    missing, unexpected or differently shaped key is a one-line :class:`CheckpointError` (never a silent
    ``strict=False``), which names the architecture arguments that differ. Cosine positions stored at another
    grid are resampled bicubically (the official ``interpolate_pos_embed``). ``with_head``: also load ``head.*``
    (continuing from a fine-tuned file such as CroCo-Stereo: the heads must then match too). ``with_decoder=False``:
    the decoder keeps its random initialisation (a binocular task started from a single-view, MAE-like
    pretraining, whose decoder never saw image 2). Returns a one-line summary."""
    path = Path(path)
    kwargs, state = read_any_checkpoint(path)
    keep_decoder = hasattr(net, "dec_blocks") and with_decoder
    unused = PRETRAINING_ONLY_KEYS if with_head else PRETRAINING_ONLY_KEYS + ("head.",)
    dropped = [k for k in state if k.startswith(unused) or (not keep_decoder and k.startswith(DECODER_KEYS))]
    state = {k: v for k, v in state.items() if k not in set(dropped)}
    interpolate_pos_embed(net, state)
    own = {k: v for k, v in net.state_dict().items() if (with_head or not k.startswith("head."))
           and (keep_decoder or not k.startswith(DECODER_KEYS))}  # fmt: skip
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state
              and state[k].shape != own[k].shape]  # fmt: skip
    problems = [f"{len(items)} {label} (e.g. {', '.join(items[:3])})" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if items]  # fmt: skip
    if problems:
        defaults = {n: p.default for n, p in inspect.signature(CroCoNet).parameters.items()}
        mine = getattr(net, "croco_kwargs", {})
        differ = [f"{k}={kwargs.get(k, defaults[k])!r} (model: {mine.get(k)!r})" for k in ARCHITECTURE_KEYS
                  if k in mine and kwargs.get(k, defaults[k]) != mine[k]]  # fmt: skip
        hint = f"; the checkpoint has {', '.join(differ)}: choose the model preset that matches" if differ else ""
        what = "weights" if with_head else "backbone weights"
        raise CheckpointError(f"{path}: {what} do not fit the model: {'; '.join(problems)}{hint}")
    net.load_state_dict({**net.state_dict(), **state}, strict=True)
    what = "network" if with_head else "backbone"
    return f"initialised {len(state)} {what} tensors from {path} (dropped {len(dropped)} unused: " \
        f"{', '.join(sorted({k.split('.')[0] for k in dropped})) or 'none'})"
