"""The progress bar in the numbering a user sees everywhere else: epochs counted from 1, of how many.

Lightning's bars write ``Epoch 2/2`` during the third of three epochs (counting from 0) while the LoRA
files, samples and checkpoints count from 1, and show ``v_num``, the last four characters of the run's
version (``on_3``). These subclasses fix both, for whichever bar Lightning picked (rich when installed).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar


def _epoch(trainer: L.Trainer) -> str:
    of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
    return f"Epoch {trainer.current_epoch + 1}{of}"


class EpochTQDMProgressBar(TQDMProgressBar):
    """:class:`TQDMProgressBar` counting epochs from 1, without ``v_num``."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(_epoch(trainer))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}


class EpochRichProgressBar(RichProgressBar):
    """:class:`RichProgressBar` counting epochs from 1, without ``v_num``."""

    def _get_train_description(self, current_epoch: int) -> str:
        return _epoch(self.trainer)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}


def epoch_progress_bar(current: ProgressBar | None) -> ProgressBar | None:
    """The counting-from-1 bar replacing Lightning's default one; None when the bar is off or the user's own."""
    if type(current) is RichProgressBar:
        return EpochRichProgressBar()
    if type(current) is TQDMProgressBar:
        return EpochTQDMProgressBar()
    return None
