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
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from croco.models.croco import CroCoNet
from croco.models.pos_embed import interpolate_pos_embed
from croco.utils.files import atomic_output

__all__ = [
    "CheckpointError",
    "croco_kwarg_names",
    "export_official_checkpoint",
    "load_backbone",
    "load_official_checkpoint",
    "network_from_lightning",
    "parse_model_string",
    "read_official_checkpoint",
    "uncompiled_state",
]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and what was expected."""


def croco_kwarg_names() -> tuple[str, ...]:
    """Constructor arguments a checkpoint may set (``norm_layer`` is code, not data)."""
    return tuple(n for n in inspect.signature(CroCoNet).parameters if n != "norm_layer")


def _check_kwargs(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    allowed = croco_kwarg_names()
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise CheckpointError(f"{where}: unknown CroCoNet argument(s) {unknown}; allowed: {', '.join(allowed)}")
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
    return _check_kwargs(kwargs, where)


def load_weights_only(path: str | os.PathLike) -> Any:
    """``torch.load`` that never executes pickled code (tensors, containers and ``argparse.Namespace`` only);
    every failure is a one-line :class:`CheckpointError` naming the file."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: the file holds pickled objects other than tensors and plain containers{what}"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first})") from None


def read_official_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return (CroCoNet kwargs, state_dict) of an official-layout file."""
    path = Path(path)
    ckpt = load_weights_only(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict (official CroCo layout)")
    if "croco_kwargs" in ckpt:
        if not isinstance(ckpt["croco_kwargs"], dict):
            raise CheckpointError(f"{path}: 'croco_kwargs' must be a dict")
        kwargs = _check_kwargs(ckpt["croco_kwargs"], f"{path}: croco_kwargs")
    elif isinstance(getattr(ckpt.get("args"), "croco_args", None), dict):  # CroCo-Stereo / CroCo-Flow
        kwargs = _check_kwargs(ckpt["args"].croco_args, f"{path}: args.croco_args")
    elif "args" in ckpt:
        model_string = getattr(ckpt["args"], "model", None)
        if not isinstance(model_string, str):
            raise CheckpointError(f"{path}: 'args' has no 'model' string such as \"CroCoNet(...)\"")
        kwargs = parse_model_string(model_string, f"{path}: args.model")
    else:
        kwargs = {}
    return kwargs, ckpt["model"]


def load_official_checkpoint(path: str | os.PathLike, **overrides: Any) -> CroCoNet:
    """Build the CroCoNet a file describes and load its weights strictly.

    ``overrides`` change constructor arguments, e.g. ``img_size=(352, 704)``: cosine buffers are then
    bicubically resampled from the checkpoint's grid (the official ``interpolate_pos_embed``)."""
    kwargs, state = read_official_checkpoint(path)
    kwargs.update(_check_kwargs(overrides, "overrides"))
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


def network_from_lightning(ckpt: Any, path: str | os.PathLike) -> CroCoNet:
    """The CroCoNet of a loaded croco Lightning checkpoint: built from its ``model`` / ``mask_ratio``
    hyper-parameters, weights from ``state_dict`` under ``net.``; every failure is a one-line ``CheckpointError``."""
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or not isinstance(hparams.get("model"), dict):
        raise CheckpointError(f"{path}: no 'hyper_parameters.model' (not a croco PretrainTask checkpoint)")
    try:
        net = CroCoNet(**hparams["model"], mask_ratio=float(hparams.get("mask_ratio", 0.9)))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build the network from its hyper-parameters ({e})") from None
    mismatch = load_strict(net, uncompiled_state(ckpt["state_dict"], prefix="net."))
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


def read_any_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(CroCoNet kwargs, network state dict) of a Lightning checkpoint of this project (weights under ``net.``)
    or of an official-layout file; kwargs may be partial (official v1 files carry none: the defaults)."""
    path = Path(path)
    ckpt = load_weights_only(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):  # Lightning
        kwargs = ckpt.get("croco_kwargs") or (ckpt.get("hyper_parameters") or {}).get("model") or {}
        state = uncompiled_state(ckpt["state_dict"], prefix="net.")
        if not state:
            raise CheckpointError(f"{path}: a Lightning checkpoint without network weights under 'net.'")
        return dict(kwargs), state
    return read_official_checkpoint(path)


def load_backbone(net: torch.nn.Module, path: str | os.PathLike, with_head: bool = False) -> str:
    """Initialise the backbone of a downstream network (``croco.models.downstream``) from ``path``.

    Parts the network does not have are dropped: the mask token and the pixel prediction head always, any
    ``head.*`` of a fine-tuned file, and the decoder when ``net`` has none. Every other key must match: a
    missing, unexpected or differently shaped key is a one-line :class:`CheckpointError` (never a silent
    ``strict=False``), which names the architecture arguments that differ. Cosine positions stored at another
    grid are resampled bicubically (the official ``interpolate_pos_embed``). ``with_head``: also load ``head.*``
    (continuing from a fine-tuned file such as CroCo-Stereo: the heads must then match too). Returns a one-line
    summary."""
    path = Path(path)
    kwargs, state = read_any_checkpoint(path)
    keep_decoder = hasattr(net, "dec_blocks")
    unused = PRETRAINING_ONLY_KEYS if with_head else PRETRAINING_ONLY_KEYS + ("head.",)
    dropped = [k for k in state if k.startswith(unused) or (not keep_decoder and k.startswith(DECODER_KEYS))]
    state = {k: v for k, v in state.items() if k not in set(dropped)}
    interpolate_pos_embed(net, state)
    own = {k: v for k, v in net.state_dict().items() if with_head or not k.startswith("head.")}
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
