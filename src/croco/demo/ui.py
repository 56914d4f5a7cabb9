"""``python demo.py --ui``: the reconstruction demo as a local web page (gradio).

Two image inputs (image 1 to mask, image 2 the reference view), the mask ratio, the seed, whether to paste the
visible patches back, the checkpoint path, and the panel of ``croco.demo.reconstruct`` as the output. The page's
function is also an API endpoint, ``/reconstruct`` (what the tests drive with ``gradio_client``). gradio is
imported here only, so ``python demo.py`` without ``--ui`` neither needs it nor starts a server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from croco.demo.reconstruct import FIT_NOTE, load_demo_network, reconstruct_pair
from croco.eval.crossview import LoadedNetwork

__all__ = ["API_NAME", "build_ui", "reconstruct_for_ui", "serve"]

API_NAME = "reconstruct"
_cache: dict[tuple[str, int, int], LoadedNetwork] = {}


def _network(path: str) -> LoadedNetwork:
    """The network of ``path``, loaded once per file version (path, size, modification time): a page is used
    for many pairs with the same checkpoint."""
    resolved = Path(path).expanduser().resolve()
    stat = resolved.stat() if resolved.is_file() else None
    key = (str(resolved), stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1)
    if key not in _cache:
        loaded = load_demo_network(resolved)  # a missing file: its one-line CheckpointError
        _cache.clear()  # one network at a time: a released ViT-L takes over 1 GB
        _cache[key] = loaded
    return _cache[key]


def reconstruct_for_ui(
    image1: np.ndarray | None,
    image2: np.ndarray | None,
    mask_ratio: float,
    seed: float,
    paste_visible: bool,
    ckpt: str,
) -> tuple[np.ndarray, str]:
    """The page's function: (panel as an RGB array, its caption). Bad input raises ``ValueError`` with one
    line (gradio shows it as the error message)."""
    if image1 is None or image2 is None:
        raise ValueError("upload both images: image 1 (to reconstruct) and image 2 (the reference view)")
    if not ckpt or not str(ckpt).strip():
        raise ValueError("checkpoint: expected the path of a .ckpt or .pth file")
    if seed is None or float(seed) != int(seed):
        raise ValueError(f"seed={seed!r}: expected an integer")
    result = reconstruct_pair(_network(str(ckpt).strip()), _rgb(image1), _rgb(image2),
                              mask_ratio=float(mask_ratio), seed=int(seed), paste_visible=bool(paste_visible))  # fmt: skip
    return np.asarray(result.panel), result.caption


def _rgb(image: np.ndarray) -> np.ndarray:
    """gradio's numpy image (H, W), (H, W, 3) or (H, W, 4), any integer or float type -> (H, W, 3) uint8."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    array = array[..., :3]
    if array.dtype != np.uint8:
        scale = 255.0 if array.dtype.kind == "f" and array.max(initial=0) <= 1.0 else 1.0
        array = np.clip(array.astype(np.float64) * scale, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(array)


def build_ui(ckpt: str | os.PathLike | None = None) -> Any:
    """The gradio ``Blocks`` of the page; ``ckpt`` pre-fills the checkpoint path."""
    import gradio as gr

    def run(image1, image2, mask_ratio, seed, paste_visible, path):
        try:
            return reconstruct_for_ui(image1, image2, mask_ratio, seed, paste_visible, path)
        except (ValueError, OSError) as e:  # shown on the page, one line
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="CroCo reconstruction demo") as page:
        gr.Markdown(
            "# CroCo: cross-view completion\nImage 1 is masked; the network reconstructs it from its visible "
            f"patches and image 2, another view of the scene. Images are {FIT_NOTE}."
        )
        with gr.Row():
            image1 = gr.Image(label="image 1 (masked, to reconstruct)", type="numpy", elem_id="image1")
            image2 = gr.Image(label="image 2 (reference view)", type="numpy", elem_id="image2")
        with gr.Row():
            mask_ratio = gr.Slider(0.05, 0.95, value=0.9, step=0.05, label="mask ratio", elem_id="mask_ratio")
            seed = gr.Number(value=0, precision=0, label="seed (same seed, same mask)", elem_id="seed")
            paste = gr.Checkbox(value=False, label="paste the visible patches back", elem_id="paste")
        path = gr.Textbox(value=str(ckpt) if ckpt else "", label="checkpoint (.ckpt or .pth)", elem_id="ckpt")
        button = gr.Button("Reconstruct", variant="primary", elem_id="run")
        panel = gr.Image(label="reference | masked | reconstruction | target", type="numpy", format="png",
                         interactive=False, show_label=False, elem_id="panel")  # fmt: skip
        caption = gr.Textbox(label="caption", interactive=False, elem_id="caption")
        button.click(run, [image1, image2, mask_ratio, seed, paste, path], [panel, caption], api_name=API_NAME)
    return page


def serve(ckpt: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the page until interrupted (local only by default: no share link, no analytics)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    build_ui(ckpt).launch(server_name=host, server_port=port, share=False)
