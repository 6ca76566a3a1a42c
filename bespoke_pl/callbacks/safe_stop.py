"""Ctrl-C and SIGTERM stop a run at a safe point, with a checkpoint that ``--ckpt_path last`` continues.

The current step finishes, ``checkpoints/last.ckpt`` is written and the run stops with
:class:`~bespoke_pl.callbacks.faults.RunInterrupted` (exit status 130 / 143). A second signal stops at once;
the previous checkpoint stays.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from bespoke_pl.callbacks.faults import AtomicCheckpointIO, kept_outputs
from bespoke_pl.errors import SIGNAL_EXIT, RunInterrupted

log = logging.getLogger(__name__)


def save_resumable(trainer: L.Trainer) -> Path:
    """Write ``last.ckpt`` where ``--ckpt_path last`` looks (the run's checkpoint folder)."""
    callback = trainer.checkpoint_callback
    folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
    folder = folder or Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
    path = folder / "last.ckpt"
    if callback is not None:
        # Part of the saved state: the resumed run then keeps writing last.ckpt, not last-v1.ckpt.
        callback.last_model_path = str(path)
    trainer.save_checkpoint(path, weights_only=False)  # the full state: optimizer, loops, callbacks
    return path


class SafeStop(L.Callback):
    """Stop on SIGINT/SIGTERM after the current step with a resumable checkpoint; on any failure, attach
    what is kept to the exception (``error.kept``) for the command line to print."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a user's own plugin
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in SIGNAL_EXIT:
                self._previous[signum] = signal.signal(signum, self._request)

    def _request(self, signum: int, frame) -> None:
        if self.requested is not None:
            self._restore()
            raise KeyboardInterrupt  # asked twice: stop now, the previous checkpoint stays
        self.requested = signum
        log.warning(
            "%s: stopping after this step with a checkpoint (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Not at an epoch's last batch: Lightning resumes such a checkpoint as a finished epoch and skips
        # on_train_epoch_end (the epoch's LoRA file and samples); stop after those instead.
        if batch_idx + 1 < trainer.num_training_batches:
            if self.requested is not None:
                # Lightning hands a step's logged values to the loggers after this hook, which a stop here
                # never reaches: hand them over first, so the step before a stop is in TensorBoard too.
                # (Private API, pinned by tests/test_faults.py.)
                trainer._logger_connector.on_batch_end()
                trainer._logger_connector.update_train_step_metrics()
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs > 0:
            return  # the run ends here anyway, with its last checkpoint
        self._stop(trainer)  # runs after the LoRA file and samples, before the checkpoint callbacks

    def _stop(self, trainer: L.Trainer) -> None:
        if self.requested is None:
            return
        path = save_resumable(trainer)
        name = signal.Signals(self.requested).name
        raise RunInterrupted(
            f"stopped by {name} at step {trainer.global_step} (epoch {trainer.current_epoch + 1}); "
            f"resumable checkpoint {path}",
            self.requested,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
        # Lightning finalizes its loggers only after a run that ends well: flush what was logged up to the
        # stop (TensorBoard writes on a thread that dies with the process), so the curves have no hole.
        for logger in trainer.loggers:
            with contextlib.suppress(Exception):  # a full disk there is reported by the error itself
                logger.finalize("failed")
        if trainer.is_global_zero and trainer.log_dir:
            exception.kept = kept_outputs(Path(trainer.log_dir))  # type: ignore[attr-defined]
