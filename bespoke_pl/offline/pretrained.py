"""The pretrained tiny bases shipped in the package, and how well a base draws the demo punks.

``tiny-punks:sdxl`` and ``tiny-punks:sd15`` name diffusers folders under ``bespoke_pl/offline/weights/``, made
by :mod:`bespoke_pl.tinybases.pretrain` (``python -m bespoke_pl pretrain-tiny``). They are loaded by the same
``from_pretrained`` code as the real models. Unlike ``tiny:*`` (random weights, for unit tests) they draw
base-style punks, so samples, metrics and tests of a LoRA trained on them mean something.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bespoke_pl.files import spec_name
from bespoke_pl.offline.tiny import FAMILIES

log = logging.getLogger(__name__)

TINY_PUNKS_PREFIX = "tiny-punks:"
PRETRAINED_DIR = Path(__file__).parent / "weights"


def tiny_punks_path(family: str) -> Path:
    """The shipped folder of the pretrained tiny ``family`` base."""
    return PRETRAINED_DIR / f"tiny-punks-{family}"


def resolve_tiny_punks(spec: str) -> str | None:
    """Returns the folder for ``"tiny-punks:sd15"`` / ``"tiny-punks:sdxl"``, or None for any other spec.

    Raises:
        ValueError: The spec starts with ``"tiny-punks:"`` but names no family, or the folder is missing.
    """
    family = spec_name(spec, TINY_PUNKS_PREFIX, FAMILIES, "pretrained tiny model")
    if family is None:
        return None
    path = tiny_punks_path(family)
    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"{spec}: {path} is missing from this installation; rebuild it with "
            f"python -m bespoke_pl pretrain-tiny --family {family} --out {path}"
        )
    return str(path)
