"""``fit --ckpt_path last``: find the run to continue, know whether it has finished, check that its
checkpoint can be read (else fall back to the run's newest readable one), and keep each invocation's config
beside the first run's."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import SaveConfigCallback

from bespoke_pl.errors import ConfigError

log = logging.getLogger("bespoke_pl")


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


def resolve_last(config) -> None:
    """Make ``--ckpt_path last`` find the newest run's checkpoint and continue in that run's folder.

    Lightning alone looks only in the new run's (empty) version folder and would start from scratch.
    """
    logger = config.trainer.logger
    init = logger.init_args if logger and hasattr(logger, "init_args") else None
    if init is None:
        return
    found = find_last_checkpoint(Path(init.save_dir), init.name or "")
    if found is None:
        log.warning(
            "--ckpt_path last: no checkpoint under %s/%s; starting a new run", init.save_dir, init.name
        )
        config.ckpt_path = None
        return
    problem = checkpoint_problem(found)
    if problem is not None:
        fallback = newest_readable(found.parent, skip=found)
        if fallback is None:
            raise ConfigError(
                f"--ckpt_path last: {found} {problem}, and no other checkpoint in {found.parent} can be "
                "read; start a new run (without --ckpt_path)"
            )
        log.warning(
            "--ckpt_path last: %s %s; resuming from %s, the newest readable checkpoint of the run",
            found,
            problem,
            fallback.name,
        )
        found = fallback
    done = completed_epochs(found)
    max_epochs = config.trainer.max_epochs
    if done is not None and max_epochs is not None and 0 <= max_epochs <= done:
        # Say so before the round trip, the caches and the model load, not after them.
        print(
            f"{found.parent.parent} has finished its {done} epochs already (max_epochs {max_epochs}); "
            "to train on, give a larger --trainer.max_epochs with --ckpt_path last"
        )
        raise SystemExit(0)
    init.version = found.parent.parent.name
    config.ckpt_path = str(found)
    log.info("resuming %s in %s", found, found.parent.parent)


def is_local_file(ckpt_path: str | None) -> bool:
    """A ``--ckpt_path`` naming a file here, not one of Lightning's keywords (best, hpc, ...) or a URL."""
    if ckpt_path is None or ckpt_path in ("best", "hpc", "last") or ckpt_path.startswith("registry"):
        return False
    return "://" not in ckpt_path


def check_ckpt_path(path: Path) -> None:
    """Refuse a ``--ckpt_path`` file that is missing or damaged, before anything is loaded or written."""
    if not path.is_file():
        raise ConfigError(f"--ckpt_path {path} does not exist")
    problem = checkpoint_problem(path)
    if problem is not None:
        fallback = newest_readable(path.parent, skip=path)
        hint = f"; {fallback} beside it can be read" if fallback else ""
        raise ConfigError(f"--ckpt_path {path} {problem}{hint}")
