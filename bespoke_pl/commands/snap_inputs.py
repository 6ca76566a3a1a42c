"""Where the snap's palette and art size come from: a LoRA file's header, a training folder or a palette
file. Each refusal is a :class:`~bespoke_pl.errors.ConfigError` naming the option and the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from bespoke_pl.errors import ConfigError
from bespoke_pl.lora.metadata import recorded_settings
from bespoke_pl.pixelart.image_files import read_image
from bespoke_pl.pixelart.palette import palette_from_hex, palette_of

# A palette is a pixel-art palette: two colours at least (one locks everything to one colour), and at most
# this many (past it the "palette" is a photo's colours and the lock would keep the noise).
MAX_COLOURS = 1024
DEFAULT_SIDE = 24
_HEX = re.compile(r"#?([0-9a-fA-F]{6})\b")


def lora_palette(path: Path) -> tuple[torch.Tensor, int]:
    """The training palette and art side in a LoRA file's header (``bespoke_pl.palette``)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ConfigError(f"--lora {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise ConfigError(f"--lora {path} is not a readable safetensors file: {error}") from error
    try:
        recorded = recorded_settings(metadata)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--lora {path}: its bespoke_pl.palette is not JSON ({error.msg})") from error
    if not recorded.palette:
        raise ConfigError(
            f"--lora {path} records no training palette in its header (bespoke_pl.palette; kohya and other "
            "tools' files have none); give --palette FILE or --palette-from DATA_DIR"
        )
    return palette_from_hex(recorded.palette), recorded.resolution or DEFAULT_SIDE


def file_palette(path: Path) -> torch.Tensor:
    """``#rrggbb`` lines (``.txt``, ``.hex``, GIMP ``.gpl`` rows of ``R G B``) or an image's colours."""
    if not path.is_file():
        raise ConfigError(f"--palette {path} does not exist")
    if path.suffix.lower() in (".png", ".gif", ".bmp", ".webp"):
        try:
            return palette_of(read_image(path)[None])
        except ValueError as error:
            raise ConfigError(f"--palette {path}: {error}") from error
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as error:
        raise ConfigError(f"--palette {path} is not a text palette or an image") from error
    colours = []
    for line in text.splitlines():
        line = line.split(";")[0].strip()
        if path.suffix.lower() == ".gpl":
            numbers = line.split()[:3]
            if len(numbers) == 3 and all(n.isdigit() and int(n) < 256 for n in numbers):
                colours.append("#" + "".join(f"{int(n):02x}" for n in numbers))
        elif match := _HEX.match(line):
            colours.append(match.group(1))
    if not colours:
        raise ConfigError(f"--palette {path} has no colours (expected #rrggbb lines)")
    return torch.unique(palette_from_hex(colours), dim=0)


def read_palette(option: str, value: str) -> tuple[torch.Tensor, int]:
    """The palette (P, 3) uint8 and art side given by ``--lora``, ``--palette-from`` or ``--palette``.

    Raises:
        ConfigError: Naming the option and the file: missing, unreadable, no palette, or a palette of
            fewer than 2 or more than :data:`MAX_COLOURS` colours.
    """
    path = Path(value).expanduser()
    if option == "--lora":
        palette, side = lora_palette(path)
    elif option == "--palette-from":
        from bespoke_pl.data.datamodule import PixelArtDataModule

        palette, side = (
            PixelArtDataModule(value, DEFAULT_SIDE, default_caption="").load().palette,
            DEFAULT_SIDE,
        )
    else:
        palette, side = file_palette(path), DEFAULT_SIDE
    if len(palette) < 2:
        raise ConfigError(f"{option} {value} has {len(palette)} colour; a palette to lock to needs 2 or more")
    if len(palette) > MAX_COLOURS:
        raise ConfigError(
            f"{option} {value} has {len(palette)} colours; a pixel-art palette has at most {MAX_COLOURS}"
        )
    return palette, side
