"""The order of a training epoch, fixed by ``(seed, epoch)`` alone, so that a resumed run draws the same.

:class:`EpochOrder` orders each epoch without the global RNG, gives every item a fixed draw seed for its
caption shuffle/dropout, and can start an epoch part-way (:class:`bespoke_pl.callbacks.resume.ExactResume`
tells it where).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochOrder(Sampler[tuple[int, int]]):
    """Items as ``(index, draw seed)`` in an order fixed by ``(seed, epoch)``; an epoch can start part-way.

    Args:
        size: Number of items per epoch (the dataset's length).
        batch_size: The loader's batch size (to skip whole batches on resume).
        seed: Base seed (the run's seed).
    """

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before each epoch (for epochs after the first of a run)."""
        self.epoch = epoch

    def start_at(self, epoch: int, batches_done: int) -> None:
        """Make the next iteration be ``epoch``, leaving out its first ``batches_done`` batches."""
        self.epoch = epoch
        self._skip = (epoch, batches_done * self.batch_size)

    def __len__(self) -> int:
        return self.size  # the whole epoch, also when it starts part-way: Lightning counts from there

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        order = torch.randperm(self.size, generator=generator).tolist()
        draws = torch.randint(0, 2**62, (self.size,), generator=generator).tolist()
        skip = self._skip[1] if self._skip and self._skip[0] == self.epoch else 0
        self._skip = None
        yield from zip(order[skip:], draws[skip:], strict=True)
