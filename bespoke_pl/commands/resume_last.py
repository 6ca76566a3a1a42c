"""``fit --ckpt_path last``: find the run to continue, know whether it has finished, check that its
checkpoint can be read (else fall back to the run's newest readable one), and keep each invocation's config
beside the first run's."""

from __future__ import annotations

import zipfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import SaveConfigCallback


def find_last_checkpoint(save_dir: Path, name: str) -> Path | None:
    """The newest ``last.ckpt`` among the runs ``save_dir/name/version_*``."""
    # is_file: a save_last="link" symlink whose target is gone does not count
    candidates = [p for p in (save_dir / name).glob("*/checkpoints/last*.ckpt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint file, read as a zip archive only (never unpickled); None if intact.

    Lightning writes checkpoints with ``torch.save``, a zip archive whose every part has a CRC: a truncated
    file has lost its directory (at the end), a damaged one fails a checksum. Reading it this way, and not
    with ``torch.load``, keeps PyTorch's advice to retry with ``weights_only=False`` (unpickling a file that
    may not be what it claims) from ever reaching the user.
    """
    try:
        if path.stat().st_size == 0:
            return "is empty (0 bytes)"
        if not zipfile.is_zipfile(path):
            return "cannot be read: it is truncated or damaged (no PyTorch checkpoint's zip directory at its end)"
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        return f"cannot be read: {error}"
    if broken is not None:
        return f"is damaged: its part {broken} fails its checksum"
    if not any(name.rsplit("/", 1)[-1] == "data.pkl" for name in names):
        return "is a zip archive but not a PyTorch checkpoint"
    return None


def newest_readable(folder: Path, skip: Path | None = None) -> Path | None:
    """The most recently written checkpoint in ``folder`` that :func:`checkpoint_problem` finds intact."""
    candidates = sorted(
        (p for p in folder.glob("*.ckpt") if p.is_file() and p != skip),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    return next((p for p in candidates if checkpoint_problem(p) is None), None)


def completed_epochs(checkpoint: Path) -> int | None:
    """How many whole epochs a run's checkpoint holds (from ExactResume's state), or None if unknown."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True).get("callbacks", {})
    except Exception:  # unreadable: let Lightning's own loading report it
        return None
    resume = state.get("ExactResume", {})
    return resume["epoch"] if resume.get("batches_done") == 0 and "epoch" in resume else None


class KeepEveryConfig(SaveConfigCallback):
    """``config.yaml`` for a run's first invocation, ``config-resume-1.yaml``, ``-2`` ... for each resume
    (Lightning's own overwrites the first run's settings with the resumed command's)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # a collective under DDP: every rank
        n = 0
        while (folder / self.config_filename).exists():
            n += 1
            self.config_filename = f"config-resume-{n}.yaml"
        super().setup(trainer, pl_module, stage)
