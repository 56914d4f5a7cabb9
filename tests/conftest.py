"""Global test fixtures (kept light: imports happen inside the fixtures that need them).

* Nothing goes online: W&B is disabled for the whole session unless a test re-enables offline mode itself.
* ``compose_train``: compose ``conf/train.yaml`` like ``train.py`` would, with every path inside ``tmp_path``.
* ``tiny_shards``: a small shard folder (72x72 pairs, several scenes) written with ``ShardWriter``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"  # == croco.utils.config.CONF_DIR, without importing croco at collection


def write_tiny_shards(folder: Path, pairs: int = 48, size: int = 72, scenes: int = 8, seed: int = 0) -> Path:
    """Pairs of smooth random images where view 2 is view 1 shifted by a few pixels (overlap ~0.8-0.9)."""
    from croco.data.shards import PairRecord, ShardWriter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size + 16, 0 : size + 16] / (size + 16)
    K = np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], dtype=np.float64)
    per_shard = max(1, pairs // 2)
    for shard in range(-(-pairs // per_shard)):
        with ShardWriter(folder / f"shard-{shard:05d}.h5", source="test", resolution=(size, size)) as writer:
            for i in range(shard * per_shard, min(pairs, (shard + 1) * per_shard)):
                freqs = rng.uniform(1, 6, size=(3, 2))
                phases = rng.uniform(0, 2 * np.pi, size=3)
                canvas = np.stack(
                    [
                        0.5 + 0.45 * np.sin(2 * np.pi * (f[0] * xx + f[1] * yy) + p)
                        for f, p in zip(freqs, phases)
                    ],
                    axis=-1,
                )
                canvas = (canvas * 255).astype(np.uint8)
                dy, dx = rng.integers(0, 16, size=2)
                writer.add(
                    PairRecord(
                        image1=canvas[:size, :size].copy(),
                        image2=canvas[dy : dy + size, dx : dx + size].copy(),
                        K1=K,
                        K2=K,
                        pose1=np.eye(4),
                        pose2=np.eye(4),
                        covis12=float((size - dy) * (size - dx) / size**2),
                        covis21=float((size - dy) * (size - dx) / size**2),
                        scene=f"scene{i % scenes:03d}",
                    )
                )
    return folder


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    return write_tiny_shards(tmp_path_factory.mktemp("shards") / "tiny")


def tiny_run_overrides(shards: Path, root: Path) -> list[str]:
    """Overrides that make any experiment run in seconds on a CPU, on the tiny shards, with files under root."""
    return [
        "model=tiny",
        "data.img_size=64",
        "data.transforms=crop64+acolor",
        f"data.sources=[{{path: '{shards}', weight: 1.0}}]",
        "data.generate_if_missing=null",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.val_fraction=0.3",
        "data.overlap_min=0.0",
        "data.pairs_per_epoch=16",
        "trainer=cpu",
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "logger=csv",
        "trainer.log_every_n_steps=2",
        f"paths.root_dir={root}",
    ]


def compose_config(overrides: list[str], root: Path, output_dir: Path | None = None):
    """Compose ``conf/train.yaml`` like ``train.py`` would (paths under ``root``), with Hydra's runtime config set
    so that ``${hydra:...}`` and the ``croco.*`` resolvers work; the ``hydra`` node is removed as in a job."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import croco.utils.resolvers  # noqa: F401 - resolvers

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="train"):
            cfg = compose("train", overrides=[f"paths.root_dir={root}", *overrides], return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir or Path(root) / "out")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def compose_train(tmp_path):
    """``compose_train(*overrides)`` -> the composed config (see ``compose_config``), paths in ``tmp_path``."""

    def _compose(*overrides: str, output_dir: Path | None = None):
        return compose_config(list(overrides), tmp_path, output_dir)

    return _compose


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread: on this shared 2-core machine two OpenMP threads competing with
    other processes are several times slower than one (measured 48 s vs 8 s for the same 100 tiny steps)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_shards():
    """``make_shards(folder, pairs=48, size=72, scenes=8, seed=0)``: see ``write_tiny_shards``."""
    return write_tiny_shards


@pytest.fixture(scope="session")
def tiny_overrides():
    """``tiny_overrides(shards, root)``: see ``tiny_run_overrides``."""
    return tiny_run_overrides


@pytest.fixture(scope="session")
def compose_at():
    """``compose_at(overrides, root, output_dir=None)``: see ``compose_config`` (usable from any fixture scope)."""
    return compose_config
