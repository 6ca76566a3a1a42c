"""Checks of the subcommands' options, done before any work: a mistake becomes a
:class:`~bespoke_pl.errors.ConfigError` naming the option (one ``error:`` line, exit status 2), not a
traceback from deep inside a library, and never after an hour of work.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bespoke_pl.diffusion.devices import pick_device
from bespoke_pl.errors import ConfigError
from bespoke_pl.files import is_free_folder


def new_folder(option: str, path: str | Path) -> Path:
    """``path`` as a folder the command will create: refused if it exists and is not an empty folder.

    Args:
        option: The option that named it (``--out``), for the message.
        path: The folder.
    """
    folder = Path(path).expanduser()
    if not is_free_folder(folder):
        raise ConfigError(f"{option} {folder} exists and is not an empty folder; give a new or empty folder")
    return folder


def output_folder(option: str, path: str | Path) -> Path:
    """``path`` as a folder to add files to: refused if it is a file.

    Args:
        option: The option that named it (``--out``), for the message.
        path: The folder (created later if missing).
    """
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {folder} is a file, not a folder")
    return folder


def device_option(requested: str) -> torch.device:
    """:func:`~bespoke_pl.diffusion.devices.pick_device` for ``--device``; a missing device is a ConfigError."""
    try:
        return pick_device(requested)
    except ValueError as error:  # e.g. --device cuda on a machine without CUDA
        raise ConfigError(f"--device: {error}") from error
