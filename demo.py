"""CroCo reconstruction demo: ``python demo.py --ckpt C --img1 A --img2 B --out panel.png``, or ``--ui`` for a
local web page. Everything happens in ``croco.demo``; see docs/demo.md."""

from __future__ import annotations

from croco.demo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
