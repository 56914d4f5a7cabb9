"""Predict disparity or optical flow for one image pair: ``python predict.py task=stereo ckpt=PATH img1=A img2=B
out=DIR``.

The checkpoint is a stereo / flow run of this project (Lightning ``.ckpt``) or a released CroCo-Stereo /
CroCo-Flow file (``{"model", "args": {croco_args, ...}}``, read without executing pickled code); the network is
rebuilt and loaded strictly. The pair is predicted tile by tile at the network's crop size with
confidence-weighted blending (``croco.models.tiling``), so any image size works. Written into ``out``:
``disparity.pfm`` or ``flow.flo`` (the raw prediction), ``conf.pfm`` (the raw confidence channel), and pictures:
``disparity.png`` (magma colour map) or ``flow.png`` (Middlebury colour wheel), ``conf.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from croco.data.dense import load_image
from croco.data.stereoflow_io import write_flo, write_pfm
from croco.data.transforms import normalize
from croco.models.checkpoints import CheckpointError, load_strict, load_weights_only, read_official_checkpoint
from croco.models.downstream import CroCoDownstreamBinocular
from croco.models.dpt import PixelwiseTaskWithDPT
from croco.models.tiling import tiled_pred
from croco.tasks.stereoflow import KINDS
from croco.utils.colors import colorize, flow_to_color
from croco.utils.files import atomic_output
from croco.utils.sizes import as_hw

__all__ = ["load_predictor", "predict_pair"]

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def load_predictor(path: str | Path, kind: str) -> tuple[Predictor, tuple[int, int], str]:
    """(network as ``f(img1, img2) -> (B, C + 1, h, w)``, its crop size, the official tiling weights of ``kind``)
    from a Lightning checkpoint of this project or an official CroCo-Stereo / CroCo-Flow file."""
    if kind not in KINDS:
        raise ValueError(f"task={kind!r}: expected one of {', '.join(KINDS)}")
    ckpt = load_weights_only(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        from croco.tasks.evaluate import load_task

        task, _ = load_task(path, ckpt)
        if getattr(task, "kind", None) != kind:
            raise CheckpointError(f"{path}: a {getattr(task, 'kind', type(task).__name__)} checkpoint, not {kind}")
        return (lambda a, b: task.net(a, b)), task.window, task.hparams.conf_mode
    kwargs, state = read_official_checkpoint(path)
    net = CroCoDownstreamBinocular(PixelwiseTaskWithDPT(num_channels=KINDS[kind]["channels"] + 1), **kwargs)
    mismatch = load_strict(net, state)
    if mismatch:
        raise CheckpointError(f"{path}: not a CroCo-{kind.capitalize()} network: {mismatch}")
    return net.eval(), as_hw(kwargs.get("img_size", 224), "img_size"), KINDS[kind]["conf_mode"]


def _save_png(image: torch.Tensor, path: Path) -> None:
    array = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    with atomic_output(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def predict_pair(
    ckpt: str | Path, kind: str, img1: str | Path, img2: str | Path, out: str | Path, overlap: float = 0.7,
    device: str = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """Predict, write the files of the module docstring into ``out`` (atomically) and return their paths."""
    net, window, conf_mode = load_predictor(ckpt, kind)
    first, second = load_image(img1), load_image(img2)
    if first.shape != second.shape:
        raise ValueError(f"{img2}: size {tuple(second.shape[1:])} differs from {img1}: {tuple(first.shape[1:])}")
    pair = [normalize(x.float().div(255).unsqueeze(0)).to(device) for x in (first, second)]
    if isinstance(net, torch.nn.Module):
        net.to(device)
    channels = KINDS[kind]["channels"]
    with torch.no_grad():
        pred, conf = tiled_pred(net, *pair, window=window, overlap=overlap, conf_mode=conf_mode, channels=channels)
    pred, conf = pred.cpu(), conf.cpu()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    if kind == "stereo":
        files["prediction"] = out / "disparity.pfm"
        with atomic_output(files["prediction"]) as tmp:
            write_pfm(tmp, pred[0, 0].numpy())
        files["picture"] = out / "disparity.png"
        _save_png(colorize(pred), files["picture"])
    else:
        files["prediction"] = out / "flow.flo"
        with atomic_output(files["prediction"]) as tmp:
            write_flo(tmp, pred[0].permute(1, 2, 0).numpy())
        files["picture"] = out / "flow.png"
        _save_png(flow_to_color(pred), files["picture"])
    files["confidence"] = out / "conf.pfm"
    with atomic_output(files["confidence"]) as tmp:
        write_pfm(tmp, conf[0, 0].numpy())
    files["confidence_picture"] = out / "conf.png"
    _save_png(colorize(conf, cmap="gray"), files["confidence_picture"])
    log.info("%s of %s, %s (%dx%d): %s", kind, img1, img2, first.shape[2], first.shape[1],
             ", ".join(str(p) for p in files.values()))  # fmt: skip
    return files
