"""When a run is stopped or fails: the errors that say so, files a failure cannot damage, what is kept.

- SIGINT (Ctrl-C) or SIGTERM: :class:`bespoke_pl.callbacks.safe_stop.SafeStop` lets the current step finish,
  writes ``checkpoints/last.ckpt`` and stops with :class:`RunInterrupted`.
- Checkpoints are written by :class:`AtomicCheckpointIO` to a temporary file next to the target, synced and
  renamed, so a kill or a full disk mid-write leaves the earlier file whole (Lightning's default writes
  through a temporary file in the system temp folder, which is a copy, not a rename, across disks).
- Every other file of a run or a command (samples, reports, generated images) goes through :func:`write_file`:
  atomic too, and a failed write is an :class:`~bespoke_pl.errors.OutputError` naming the file.
- Any failure: the exception carries ``kept``, a line naming the LoRA files and checkpoint still on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from bespoke_pl.errors import OutputError
from bespoke_pl.files import atomic_write

log = logging.getLogger(__name__)


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


def write_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """:func:`atomic_write`, with a failure to write (a full disk, no permission) raised as an
    :class:`~bespoke_pl.errors.OutputError` that names the file; any earlier file there stays whole."""
    try:
        return atomic_write(path, write)
    except OSError as error:
        raise OutputError(write_failure(Path(path), error, [])) from error


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.NAME.PID.tmp`` beside the target, fsync, then an atomic rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: Lightning's fsspec writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_file(Path(path), lambda tmp: torch.save(checkpoint, tmp))
