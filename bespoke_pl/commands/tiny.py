"""``python -m bespoke_pl tiny``: write a tiny offline SD 1.5- or SDXL-shaped model with random weights."""

from __future__ import annotations

from typing import Literal

from bespoke_pl.commands.options import new_folder
from bespoke_pl.offline.tiny import write_tiny_model


def tiny(family: Literal["sd15", "sdxl"] = "sdxl", out: str | None = None, seed: int = 0) -> None:
    """Write a tiny SD 1.5- or SDXL-shaped diffusers folder with random weights.

    Args:
        family: Which architecture to mimic.
        out: Output folder (must not exist or be empty); default ``./tiny-<family>``.
        seed: Seed of the random weights.
    """
    path = write_tiny_model(family, new_folder("--out", out or f"tiny-{family}"), seed=seed)
    print(f"wrote tiny {family} model to {path}")


def command(argv: list[str]) -> None:
    from bespoke_pl.commands.parsing import run_command

    run_command("tiny", tiny, argv)
