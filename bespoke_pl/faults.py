"""When a run is stopped or fails: stop at a safe point, write files so a failure cannot damage them, say
what is kept.

- SIGINT (Ctrl-C) or SIGTERM: :class:`SafeStop` lets the current step finish, writes ``checkpoints/last.ckpt``
  and stops with :class:`RunInterrupted`; ``--ckpt_path last`` continues from there. A second signal stops
  at once (the previous checkpoint stays).
- Checkpoints are written by :class:`AtomicCheckpointIO` to a temporary file next to the target, synced and
  renamed, so a kill or a full disk mid-write leaves the earlier file whole (Lightning's default writes
  through a temporary file in the system temp folder, which is a copy, not a rename, across disks).
- Any failure: the exception carries ``kept``, a line naming the LoRA files and checkpoint still on disk.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)

_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}  # the shell's 128 + signal number


class OutputError(RuntimeError):
    """A file of the run could not be written; the message says what was kept instead."""


class RunInterrupted(Exception):
    """The run stopped on a signal after saving a resumable checkpoint.

    Not a KeyboardInterrupt: Lightning turns those into ``sys.exit(1)`` without a message.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = _SIGNAL_EXIT.get(signum, 1)


def kept_outputs(folder: Path) -> str:
    """One line naming the newest LoRA file and checkpoint in a run folder."""
    loras = sorted(folder.glob("*.safetensors"))
    checkpoints = sorted((folder / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    parts = []
    if loras:
        parts.append(f"LoRA files up to {loras[-1].name}" if len(loras) > 1 else loras[0].name)
    if checkpoints:
        parts.append(
            f"checkpoint {checkpoints[-1].relative_to(folder)} (resume: same command + --ckpt_path last)"
        )
    return f"kept in {folder}: {', '.join(parts)}" if parts else f"nothing saved yet in {folder}"


def write_failure(path: Path, error: BaseException, earlier: list[Path]) -> str:
    """The message for a file that could not be written, naming what is still there."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    kept = f"{path.name} was not replaced" if path.exists() else "no file was replaced"
    if earlier:
        kept += f"; earlier files are intact, newest {earlier[-1].name}"
    return f"could not write {path}: {reason}; {kept}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.NAME.PID.tmp`` beside the target, fsync, then an atomic rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: Lightning's fsspec writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as error:
            tmp.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise OutputError(write_failure(path, error, [])) from error
            raise


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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in _SIGNAL_EXIT:
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
        if trainer.is_global_zero and trainer.log_dir:
            exception.kept = kept_outputs(Path(trainer.log_dir))  # type: ignore[attr-defined]
