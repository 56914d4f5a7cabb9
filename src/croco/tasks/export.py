"""Convert a Lightning pretraining checkpoint into the official CroCo ``.pth`` layout.

    python -m croco.tasks.export logs/runs/pretrain/checkpoints/last.ckpt CroCo_ours.pth

The output is ``{"model": state_dict, "croco_kwargs": {...}}``, the layout of the released CroCo v2 files, so the
official demo, DUSt3R and ``croco.models.load_official_checkpoint`` read it. The checkpoint is loaded with
``weights_only=True``; the network is rebuilt from the hyper-parameters the checkpoint carries, checked first
(``croco.models.checkpoints.check_croco_kwargs``). Any bad input is one line, ``error: <file>: ...``, and exit
status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from croco.models import CroCoNet, export_official_checkpoint
from croco.models.checkpoints import load_weights_only, network_from_lightning

__all__ = ["export_lightning_checkpoint", "load_task_network", "main"]


def load_task_network(ckpt_path: str | os.PathLike) -> CroCoNet:
    """The CroCoNet stored in a ``PretrainTask`` checkpoint (hyper-parameters ``model`` + ``mask_ratio``)."""
    return network_from_lightning(load_weights_only(ckpt_path), ckpt_path)


def export_lightning_checkpoint(ckpt_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Write the network of a Lightning checkpoint as an official ``.pth`` (atomically); returns the path."""
    return export_official_checkpoint(load_task_network(ckpt_path), out_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m croco.tasks.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="Lightning checkpoint written by train.py (e.g. .../last.ckpt)")
    parser.add_argument("output", help="path of the official-layout .pth to write")
    args = parser.parse_args(argv)
    try:
        out = export_lightning_checkpoint(args.checkpoint, args.output)
    except ValueError as e:  # CheckpointError included: one line naming the file
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # every read failure is a CheckpointError: this is writing the output
        print(
            f"error: {args.output}: cannot write the output ({e.strerror or type(e).__name__})",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
