"""The pretraining step's masks: drawn on the batch's device from a seeded generator, trusted by the network
(no validity check, so no host read), reproducible from (mask_seed, step, batch index, rank)."""

from __future__ import annotations

import torch

from croco.models.masking import RandomMask
from croco.tasks.pretrain import PretrainTask
from croco.utils.config import model_preset

TINY = {**model_preset("tiny"), "enc_depth": 1, "dec_depth": 1}


def test_training_step_trusts_its_own_mask_and_skips_the_host_read(monkeypatch):
    task = PretrainTask(model=TINY, mask_ratio=0.75, mask_seed=5)
    monkeypatch.setattr(task, "log_training_loss", lambda *args, **kwargs: None)

    def no_check(*args, **kwargs):
        raise AssertionError("the training step must not check (and read back) its own mask")

    monkeypatch.setattr(task.net, "_check_mask", no_check)
    drawn = []
    original = task.training_mask
    monkeypatch.setattr(task, "training_mask", lambda *a: drawn.append(original(*a)) or drawn[-1])
    batch = {"img1": torch.randn(2, 3, 64, 64), "img2": torch.randn(2, 3, 64, 64)}
    loss = task.training_step(batch, batch_idx=3)
    assert torch.isfinite(loss)
    # the step's mask is the seeded draw: the same generator seed on the batch's device gives the same mask
    assert torch.equal(drawn[0], original(2, 64, 3, torch.device("cpu")))
    assert drawn[0].device.type == "cpu" and drawn[0].sum(1).tolist() == [48, 48]


def test_seeded_masks_are_drawn_on_the_generators_device_without_a_copy():
    generator = torch.Generator(device="cpu").manual_seed(7)
    mask = RandomMask(0.75)(2, 64, "cpu", generator=generator)
    again = RandomMask(0.75)(2, 64, "cpu", generator=torch.Generator(device="cpu").manual_seed(7))
    assert torch.equal(mask, again) and mask.sum(1).tolist() == [48, 48]
    # a mask_seed run reseeds one generator per device: the same (step, batch, rank) gives the same mask
    task = PretrainTask(model=TINY, mask_ratio=0.75, mask_seed=1)
    first = task.training_mask(2, 64, 0, torch.device("cpu"))
    task.training_mask(2, 64, 1, torch.device("cpu"))
    assert torch.equal(first, task.training_mask(2, 64, 0, torch.device("cpu")))
    assert len(task._seeded_generators) == 1
