#!/usr/bin/env bash
# The GPU checks in one short run (make gpu-check): the tests marked gpu (bf16 step, torch.compile, SDPA backend
# parity, JPEG decoding on the device), then the training-step bench of CroCo v1 and v2 ViT-L/Base at 224 in bf16,
# eager and compiled, against the official computation; rows go to docs/benchmarks.md with the card's name,
# its datasheet bf16 peak and the MFU. About 5 minutes on one H100-class card.
set -euo pipefail
PY=${PY:-.venv/bin/python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA device visible to torch')"
"$PY" -m pytest -m gpu tests/gpu -q -ra
for preset in croco_v1 croco_v2_large_base; do
  "$PY" -m croco.bench.model --device cuda --preset "$preset" --batch 64 --precision bf16 \
    --variants official project project-compiled --steps 10 --warmup 3
done
