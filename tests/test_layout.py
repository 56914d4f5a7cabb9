"""The package's layers: every import points down, and the library parts work from a plain install.

Layers, bottom up: ``utils`` <- ``geometry``, ``models`` <- ``data`` <- ``synth``, ``importers`` <- ``tasks`` <-
entry points;
``eval`` (accuracy metrics) sits on ``models`` and ``data`` and serves ``tasks``; ``bench`` measures any of
them; ``demo`` (the reconstruction demo) sits on ``tasks`` and ``importers``; ``studies`` (the paper's findings)
sits on top: it runs the entry points and reads what they wrote. A module may import its own layer
and the layers below it, nothing above.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "src" / "croco"

ALLOWED: dict[str, set[str]] = {
    "utils": {"utils"},
    "geometry": {"geometry", "utils"},
    "models": {"models", "utils"},
    "data": {"data", "geometry", "utils"},
    "synth": {"synth", "data", "geometry", "utils"},
    "importers": {"importers", "data", "geometry", "utils"},
    "eval": {"eval", "models", "data", "geometry", "utils"},
    "tasks": {"tasks", "eval", "models", "data", "geometry", "utils"},
    "bench": {"bench", "tasks", "eval", "synth", "models", "data", "geometry", "utils"},
    "demo": {"demo", "tasks", "eval", "importers", "models", "data", "geometry", "utils"},
    "studies": {"studies", "bench", "tasks", "eval", "synth", "models", "data", "geometry", "utils"},
}


def croco_imports(path: Path) -> set[str]:
    """The croco sub-packages a module imports, at any depth of its code (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "croco" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_package_is_placed_in_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_down(layer):
    wrong = {
        str(path.relative_to(PACKAGE)): sorted(croco_imports(path) - ALLOWED[layer] - {"__version__"})
        for path in sorted((PACKAGE / layer).rglob("*.py"))
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_layer_check_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from croco.synth.pipeline import generate_pairs\n    import croco.tasks.base\n")
    assert croco_imports(module) == {"synth", "tasks"}


@pytest.mark.slow
def test_library_parts_work_from_a_plain_install(tmp_path):
    """Build the wheel, unpack it away from the checkout, and use models, geometry, data and synth there:
    nothing may need the repository's conf/ or files outside the package."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    shutil.rmtree(REPO_ROOT / "build", ignore_errors=True)  # setuptools' scratch folder in the checkout
    (wheel,) = tmp_path.glob("croco-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = """
import numpy as np, torch
from croco.models import CroCoNet, MaskedMSE
from croco.geometry.cameras import intrinsics_from_hfov
from croco.geometry.covisibility import covisibility
from croco.data.shards import ShardReader
from croco.data.datamodule import PairDataModule
from croco.synth.pipeline import generate_pairs
import croco.models, croco.data
net = CroCoNet(img_size=32, patch_size=8, enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32,
               dec_depth=1, dec_num_heads=2)
pred, mask, target = net(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
assert torch.isfinite(MaskedMSE()(pred, mask, target))
K = intrinsics_from_hfov(60.0, 16)
depth = np.ones((16, 16), np.float32)
assert covisibility(depth, depth, K, K, np.eye(4), np.eye(4))[0] == 1.0
(shard,) = generate_pairs("shards", 2, resolution=32, pairs_per_scene=2, progress=False, screen_resolution=0)
assert len(ShardReader(shard)) == 2
print("ok", croco.models.__file__)
"""
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled"}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("ok ") and str(site) in last  # the unpacked wheel, not the checkout
