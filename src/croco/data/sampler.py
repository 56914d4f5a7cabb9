"""``EpochPairSampler``: which pairs each training epoch sees, drawn by source weight, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class EpochPairSampler(Sampler):
    """Draw each epoch's pairs by source weight, deterministic in (seed, epoch), with a seed per sample.

    ``pairs_per_epoch`` slots are shared among sources in proportion to their weights (largest remainder);
    inside a source pairs are taken from successive random permutations, so every pair is seen once before
    any repeats. The result is shuffled and yielded as ``(pair, sample_seed)``. Lightning shards it across
    ranks with ``DistributedSamplerWrapper`` (which forwards ``set_epoch``); without ``set_epoch`` calls the
    epoch is the number of completed passes.
    """

    def __init__(
        self, source: np.ndarray, weights: Sequence[float], pairs_per_epoch: int | None = None, seed: int = 0
    ) -> None:
        self.source = np.asarray(source)
        sizes = (
            np.bincount(self.source, minlength=len(weights)) if len(self.source) else np.zeros(len(weights))
        )
        effective = np.asarray(weights, dtype=np.float64) * (sizes > 0)
        if len(self.source) == 0 or effective.sum() <= 0:
            raise ValueError(
                "no training pairs to sample from (check the sources, weights and overlap range)"
            )
        self.weights = effective / effective.sum()
        self.members = [np.flatnonzero(self.source == s) for s in range(len(weights))]
        self.pairs_per_epoch = int(pairs_per_epoch) if pairs_per_epoch else len(self.source)
        if self.pairs_per_epoch <= 0:
            raise ValueError(f"pairs_per_epoch must be positive, got {pairs_per_epoch}")
        self.seed = seed
        self.epoch: int | None = None
        self._passes = 0
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, start: int) -> None:
        """Make the next pass continue ``epoch`` after its first ``start`` samples (a mid-epoch resume).

        The consumed samples move to the end instead of disappearing, so the length does not change: under
        DDP, where rank r reads every world_size-th sample, dropping ``k * batch * world_size`` samples from the
        front gives every rank its own batches from k on; the trainer stops the epoch before the moved ones."""
        self._resume = (int(epoch), int(start))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.pairs_per_epoch

    def quotas(self) -> np.ndarray:
        """Slots per source this epoch (largest-remainder rounding of weight * pairs_per_epoch)."""
        exact = self.weights * self.pairs_per_epoch
        quotas = np.floor(exact).astype(np.int64)
        remainder = self.pairs_per_epoch - quotas.sum()
        quotas[np.argsort(-(exact - quotas), kind="stable")[:remainder]] += 1
        return quotas

    def epoch_keys(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(pairs, sample seeds) of one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        chosen = []
        for members, quota in zip(self.members, self.quotas()):
            if quota == 0:
                continue
            rounds = -(-quota // len(members))
            chosen.append(np.concatenate([rng.permutation(members) for _ in range(rounds)])[:quota])
        pairs = rng.permutation(np.concatenate(chosen))
        seeds = rng.integers(0, 2**62, size=len(pairs))
        return pairs, seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start = 0
        if self._resume is not None:  # the epoch is known before the trainer's set_epoch of this pass
            (self.epoch, start), self._resume = self._resume, None
        epoch = self.epoch if self.epoch is not None else self._passes
        pairs, seeds = self.epoch_keys(epoch)
        if 0 < start < len(pairs):
            pairs, seeds = np.roll(pairs, -start), np.roll(seeds, -start)
        self._passes += 1
        return iter(zip(pairs.tolist(), seeds.tolist()))
