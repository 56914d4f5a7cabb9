"""Callbacks: panel sample selection, atomic checkpoint writes, the SLURM environment factory."""

from __future__ import annotations

import math

import pytest
import torch

from croco.tasks.callbacks import AtomicCheckpointIO, Panels
from croco.utils.slurm import slurm_environment


def test_panel_samples_are_spread_over_the_validation_set():
    panels = Panels(every_n_steps=10, num_samples=4)
    assert panels.sampling_plan(10) == {0: 1, 3: 1, 6: 1, 9: 1}
    assert panels.sampling_plan(2) == {0: 2, 1: 2}
    assert panels.sampling_plan(1) == {0: 4}
    assert panels.sampling_plan(math.inf) == {0: 4}
    batch = {"img1": torch.arange(8.0).view(8, 1, 1, 1), "img2": -torch.arange(8.0).view(8, 1, 1, 1)}
    taken = panels._take({**batch, "name": "not a tensor"}, 2)
    assert set(taken) == {"img1", "img2"}
    assert taken["img1"].flatten().tolist() == [0.0, 7.0] and taken["img2"].flatten().tolist() == [0.0, -7.0]
    with pytest.raises(ValueError, match="every_n_steps=0"):
        Panels(every_n_steps=0)


def test_atomic_checkpoint_io_never_leaves_a_partial_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an unpicklable object
        io.save_checkpoint({"w": torch.zeros(3), "bad": lambda: None}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # and no temporary file is left


def test_slurm_environment_factory():
    env = slurm_environment(auto_requeue=True, requeue_signal="SIGUSR2")
    assert env.auto_requeue and env.requeue_signal.name == "SIGUSR2"
    with pytest.raises(ValueError, match="requeue_signal='USR9'"):
        slurm_environment(requeue_signal="USR9")
