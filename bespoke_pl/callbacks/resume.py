"""Resuming a run exactly, from an epoch's end or from a step in the middle of an epoch.

Lightning restores weights, optimizer, scheduler and loop counters, but not two things a continued run
needs to match an uninterrupted one: where in the epoch's shuffled order the run stopped, and the random
number generators that draw noise and timesteps. Here:

- :class:`EpochOrder` orders each epoch from ``(seed, epoch)`` alone (no global RNG), gives every item a
  fixed draw seed for its caption shuffle/dropout, and can start an epoch part-way.
- :class:`ExactResume` records ``(epoch, batches done)`` and the RNG states in every checkpoint, and on
  resume tells the order where to start and restores the RNGs just before the next step.

Together, on one device with a fixed seed, a resumed run takes the same steps as one never stopped.
"""

from __future__ import annotations

import logging
import random
import warnings

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from bespoke_pl.data.datamodule import pixel_data
from bespoke_pl.data.order import EpochOrder

log = logging.getLogger(__name__)

# Lightning warns on every mid-epoch resume unless the loader implements its stateful-loader protocol;
# EpochOrder + ExactResume resume mid-epoch correctly, so the warning would only mislead.
_MID_EPOCH_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


def capture_rng() -> dict:
    """The states of every generator a training step draws from."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # Plain lists and tensors only: checkpoints must stay loadable with torch.load(weights_only=True).
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class ExactResume(L.Callback):
    """Save the epoch position and RNG states in each checkpoint; continue from them on resume.

    Needs the datamodule's ``epoch_order`` (an :class:`EpochOrder`); without one, only the RNGs are
    restored and Lightning's own (epoch-level) resume applies.
    """

    def __init__(self) -> None:
        self.epoch, self.batches_done, self.seed = 0, 0, None
        self._pending: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Runs before ModelCheckpoint's hook (Lightning orders checkpoint callbacks last).
        self.epoch, self.batches_done = trainer.current_epoch, batch_idx + 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch, self.batches_done = trainer.current_epoch + 1, 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "seed": self.seed,
            "rng": capture_rng(),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_fit_start(self, trainer, pl_module) -> None:
        # After the checkpoint is read, before the first batch is drawn.
        data = pixel_data(trainer)
        order = data.epoch_order if data is not None else None
        if self._pending is None or not isinstance(order, EpochOrder):
            self.seed = order.seed if isinstance(order, EpochOrder) else None
            return
        if self._pending.get("seed") is not None:
            order.seed = self._pending["seed"]  # the killed run's order, also when no seed was fixed
        self.seed = order.seed
        epoch, done = self._pending["epoch"], self._pending["batches_done"]
        order.start_at(epoch, done)
        warnings.filterwarnings("ignore", message=_MID_EPOCH_WARNING)
        if done:
            log.info("resuming epoch %d after its batch %d", epoch + 1, done)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # As late as possible: anything drawn between loading and the first step would shift the streams.
        if self._pending is not None:
            restore_rng(self._pending["rng"])
            self._pending = None


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, adjusted so that every finished epoch is resumable from its end.

    - ``last.ckpt`` is also written at every epoch's end when ``every_n_train_steps`` is set (Lightning then
      saves on steps only).
    - A step save that falls on an epoch's last batch waits for the epoch's end: Lightning resumes a
      checkpoint taken at the last batch as a finished epoch and skips ``on_train_epoch_end``, so a kill
      before that epoch's hooks ran would lose its LoRA file and samples for good.

    - ``{epoch}`` in ``filename`` counts from 1, as the LoRA files and samples do: the epoch a step save
      falls in, or the epoch an epoch-end save finishes (Lightning counts from 0).

    Arguments as ``ModelCheckpoint``.
    """

    def format_checkpoint_name(
        self, metrics: dict, filename: str | None = None, ver: int | None = None, **kwargs
    ):
        if "epoch" in metrics:
            metrics = dict(metrics) | {"epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, **kwargs)

    def _monitor_candidates(self, trainer: L.Trainer) -> dict:
        # The module logs a 1-based `epoch` for TensorBoard; names count from Lightning's 0-based epoch + 1.
        candidates = super()._monitor_candidates(trainer)
        candidates["epoch"] = torch.tensor(trainer.current_epoch)
        return candidates

    def _should_save_on_train_epoch_end(self, trainer: L.Trainer) -> bool:
        # Lightning would save at the validation's end when a run validates: before the epoch's LoRA file
        # and samples, so a kill between the two would resume past an epoch whose files were never written.
        # The validation loss is logged by then either way, so a monitor on val/loss still works.
        return True if self._save_on_train_epoch_end is None else self._save_on_train_epoch_end

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # saved in on_train_epoch_end
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Private helpers of ModelCheckpoint; tests/test_faults.py pins this behaviour.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
