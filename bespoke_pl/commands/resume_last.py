"""``fit --ckpt_path last``: find the run to continue, know whether it has finished, and keep each
invocation's config beside the first run's."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import SaveConfigCallback


def find_last_checkpoint(save_dir: Path, name: str) -> Path | None:
    """The newest ``last.ckpt`` among the runs ``save_dir/name/version_*``."""
    # is_file: a save_last="link" symlink whose target is gone does not count
    candidates = [p for p in (save_dir / name).glob("*/checkpoints/last*.ckpt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


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
