"""The run's folder: where it is, the PNGs written into it, and the refusal to start a new run over an old one."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from PIL import Image

from bespoke_pl.errors import ConfigError
from bespoke_pl.files import atomic_write


def run_dir(trainer: L.Trainer) -> Path:
    """The run's directory (the logger's version folder, e.g. ``logs/bespoke/version_0``).

    ``Trainer.log_dir`` is a collective under DDP (rank zero broadcasts it): call this on every rank,
    as the callbacks do in ``setup``, never inside a rank-zero-only branch.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def save_png(image: torch.Tensor, path: Path) -> None:
    """Save a uint8 (3, H, W) tensor as an RGB PNG (lossless: colours are kept exactly)."""
    array = image.permute(1, 2, 0).cpu().numpy()
    atomic_write(path, lambda tmp: Image.fromarray(array, "RGB").save(tmp, format="PNG"))


OUTPUT_PATTERNS = ("*.safetensors", "checkpoints/*.ckpt")


def check_run_folder(folder: Path, resuming: bool) -> None:
    """Refuse to start a new run in a folder holding an earlier run's LoRA files or checkpoints."""
    if resuming or not folder.is_dir():
        return
    found = sorted(p for pattern in OUTPUT_PATTERNS for p in folder.glob(pattern))
    if found:
        names = ", ".join(str(p.relative_to(folder)) for p in found[:3])
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise ConfigError(
            f"{folder} already holds a run ({names}{more}); a new run would overwrite it. Resume it "
            "(--ckpt_path last) or give the new run its own folder (leave trainer.logger.init_args.version "
            "unset)"
        )
