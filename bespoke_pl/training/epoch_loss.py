"""The running sums behind ``train/loss_epoch``, kept in the checkpoint so a resumed epoch's mean is whole.

Lightning's own ``on_epoch=True`` mean lives in memory only: after a stop mid-epoch and ``--ckpt_path last``
it averages only the batches after the resume. These sums travel in the checkpoint instead.
"""

from __future__ import annotations

import torch


class EpochLoss:
    """Sum of ``loss * batch_size`` and of the batch sizes, for one epoch at a time."""

    def __init__(self) -> None:
        self.epoch = -1
        self.total = 0.0
        self.count = 0

    def add(self, epoch: int, loss: torch.Tensor, size: int) -> None:
        """Add a batch's mean loss (a 0-d tensor, kept on its device until the epoch's end)."""
        if epoch != self.epoch:  # a new epoch: the sums start again
            self.epoch, self.total, self.count = epoch, 0.0, 0
        self.total = self.total + loss.float() * size
        self.count += size

    def totals(self, epoch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum, count)`` of ``epoch`` as float tensors on ``device``; zeros for an epoch with no batch."""
        if epoch != self.epoch:
            return torch.zeros((), device=device), torch.zeros((), device=device)
        total = torch.as_tensor(self.total, dtype=torch.float32, device=device)
        return total, torch.tensor(float(self.count), device=device)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "total": float(self.total), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.total, self.count = state["epoch"], state["total"], state["count"]
