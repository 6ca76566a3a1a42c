"""The run's folder: where it is, the files written into it, the check that it can be written, the clean-up
of an interrupted write's temporary files, and the refusal to start a new run over an old one."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import lightning as L
import torch
from PIL import Image

from bespoke_pl.callbacks.faults import write_file
from bespoke_pl.errors import ConfigError

log = logging.getLogger(__name__)


def run_dir(trainer: L.Trainer) -> Path:
    """The run's directory (the logger's version folder, e.g. ``logs/bespoke/version_0``).

    ``Trainer.log_dir`` is a collective under DDP (rank zero broadcasts it): call this on every rank,
    as the callbacks do in ``setup``, never inside a rank-zero-only branch.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def save_png(image: torch.Tensor, path: Path) -> None:
    """Save a uint8 (3, H, W) tensor as an RGB PNG (lossless: colours are kept exactly)."""
    array = image.permute(1, 2, 0).cpu().numpy()
    write_file(path, lambda tmp: Image.fromarray(array, "RGB").save(tmp, format="PNG"))


def check_writable(folder: Path, option: str = "trainer.logger.init_args.save_dir") -> None:
    """Refuse a run folder that cannot be created or written, before any weight loads.

    The nearest existing ancestor is probed with a real temporary file (deleted at once): permissions
    alone do not show a read-only mount, and a path through a file is no folder at all.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file, not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(
            f"the run folder {folder} cannot be written ({existing}: {reason}); give a --{option} you can write to"
        ) from None


def remove_leftover_temporaries(folder: Path) -> None:
    """Delete the temporary files (``.NAME.*.tmp``, see :func:`bespoke_pl.files.atomic_write`) that a killed
    write left in a run folder; the file each one would have become is either whole or absent."""
    if not folder.is_dir():
        return
    leftovers = [p for pattern in (".*.tmp", "*/.*.tmp", "samples/*/.*.tmp") for p in folder.glob(pattern)]
    for path in leftovers:
        with contextlib.suppress(OSError):
            os.unlink(path)
    if leftovers:
        log.info("removed %d temporary files an interrupted write left in %s", len(leftovers), folder)


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
