"""``python demo.py``: the reconstruction panel of an image pair, or (``--ui``) the same in a local web page.

    python demo.py --ckpt logs/runs/crossview_cpu/checkpoints/last.ckpt --img1 a.png --img2 b.png --out panel.png
    python demo.py --ui [--ckpt PATH] [--port 7860]

Any bad input (checkpoint, image, mask ratio, output path) is one line, ``error: ...``, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from croco.demo.reconstruct import FIT_NOTE

    parser = argparse.ArgumentParser(
        prog="python demo.py",
        description="CroCo cross-view completion: mask image 1, reconstruct it from its visible patches and "
        "image 2, and save the panel reference (image 2) | masked image 1 | reconstruction | target (image 1). "
        f"Images of any size are {FIT_NOTE} (no tiling: the network sees the scale it was trained at).",
    )
    parser.add_argument("--ckpt", type=Path, help="a pretraining checkpoint: Lightning .ckpt of train.py, an "
                        "exported .pth, or an official CroCo.pth / CroCo_V2_*.pth (read with weights_only=True)")
    parser.add_argument("--img1", type=Path, help="the view to mask and reconstruct")
    parser.add_argument("--img2", type=Path, help="the reference view of the same scene")
    parser.add_argument("--mask-ratio", type=float, default=0.9, help="fraction of image 1's patches hidden "
                        "(default 0.9, the paper's)")
    parser.add_argument("--seed", type=int, default=0, help="the mask's seed: the same seed, the same mask")
    parser.add_argument("--paste-visible", action="store_true",
                        help="show image 1's own pixels on the visible patches of the reconstruction")
    parser.add_argument("--out", type=Path, default=Path("panel.png"), help="PNG to write (default panel.png)")
    parser.add_argument("--ui", action="store_true", help="serve the demo as a local web page (gradio) instead")
    parser.add_argument("--host", default="127.0.0.1", help="--ui: address to serve on (default localhost only)")
    parser.add_argument("--port", type=int, default=7860, help="--ui: port (default 7860)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ui:
        from croco.demo.ui import serve

        serve(args.ckpt, host=args.host, port=args.port)
        return 0
    missing = [f"--{name}" for name in ("ckpt", "img1", "img2") if getattr(args, name) is None]
    if missing:
        parser.error(f"{', '.join(missing)} required (or --ui for the web page)")

    from croco.data.preview import save_png
    from croco.demo.reconstruct import reconstruct_files

    try:
        result = reconstruct_files(args.ckpt, args.img1, args.img2, mask_ratio=args.mask_ratio, seed=args.seed,
                                   paste_visible=args.paste_visible)  # fmt: skip
    except ValueError as e:  # CheckpointError and unreadable images included: one line naming the file
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        out = save_png(result.panel, args.out)
    except OSError as e:
        print(f"error: {args.out}: cannot write the panel ({e.strerror or type(e).__name__})", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
