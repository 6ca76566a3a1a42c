"""``python -m bespoke_pl snap INPUT... --out DIR``: exact 24x24 art from images made by any generator.

The palette and the art size come from a LoRA file's header (``--lora``), a training folder
(``--palette-from``) or a palette file (``--palette``); each image's grid is found
(:func:`~bespoke_pl.pixelart.snap.snap_image`), its cells reduced and locked to the palette. An image that
cannot be snapped gets one line naming the file and the problem, nothing is written for it, and the others
go through. Nothing that exists is ever overwritten.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from bespoke_pl.callbacks.faults import write_file
from bespoke_pl.commands.options import output_folder
from bespoke_pl.commands.snap_inputs import read_palette
from bespoke_pl.errors import ConfigError
from bespoke_pl.pixelart.find_grid import NoGridError
from bespoke_pl.pixelart.grid import upscale_nearest
from bespoke_pl.pixelart.image_files import read_image
from bespoke_pl.pixelart.snap import snap_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
PREVIEW_SUFFIX = "-preview"  # what snap --preview writes; such a file is a preview, not an image to snap


@dataclass
class SnapOutcome:
    """What ``snap`` did: the files written, and one line per image it could not snap."""

    written: list[Path]
    refused: list[str]


def palette_source(
    lora: str | None, palette_from: str | None, palette: str | None
) -> tuple[torch.Tensor, int]:
    """The palette (P, 3) uint8 and the art side from exactly one of the three options."""
    given = [
        (name, value)
        for name, value in (("--lora", lora), ("--palette-from", palette_from), ("--palette", palette))
        if value
    ]
    if len(given) != 1:
        raise ConfigError("give exactly one of --lora FILE, --palette-from DATA_DIR or --palette FILE")
    return read_palette(*given[0])


def input_images(inputs: list[str]) -> list[Path]:
    """The files named, and the images in the folders named (sorted), in order, each once."""
    found: list[Path] = []
    for name in inputs:
        path = Path(name).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise ConfigError(f"input {path} does not exist")
    return list(dict.fromkeys(found))


def _write_png(image: torch.Tensor, path: Path) -> None:
    array = image.permute(1, 2, 0).cpu().numpy()
    write_file(path, lambda tmp: Image.fromarray(array, "RGB").save(tmp, format="PNG"))


def snap_images(
    inputs: list[str],
    out: str,
    lora: str | None = None,
    palette_from: str | None = None,
    palette: str | None = None,
    pixel_scale: float | None = None,
    preview: bool = False,
    preview_scale: int = 8,
) -> SnapOutcome:
    """Snap images from any generator to exact pixel art in the training palette.

    Args:
        inputs: Image files and folders of images (PNG, JPEG, WebP, BMP).
        out: Output folder; ``<name>.png`` is written for each input ``<name>.*``, never over a file.
        lora: A bespoke_pl LoRA file: the palette and the art size from its header.
        palette_from: A training folder: its images' colours are the palette.
        palette: A palette file: ``#rrggbb`` lines (``.txt``, ``.hex``), a GIMP ``.gpl``, or an image whose
            colours are the palette.
        pixel_scale: Image pixels per art pixel, if known (a hint; the grid's phase is still found).
        preview: Also write ``<name>-preview.png``, the art nearest-upscaled by ``preview_scale``.
        preview_scale: Nearest-upscale factor of the previews.
    """
    colours, side = palette_source(lora, palette_from, palette)
    folder = output_folder("--out", out)
    if pixel_scale is not None and pixel_scale <= 0:
        raise ConfigError(f"--pixel_scale must be > 0, got {pixel_scale}")
    written, refused = [], []
    for path in input_images(inputs):
        targets = [folder / f"{path.stem}.png"] + (
            [folder / f"{path.stem}{PREVIEW_SUFFIX}.png"] if preview else []
        )
        try:
            if path.stem.endswith(PREVIEW_SUFFIX):
                raise ValueError(
                    f"a preview written by snap --preview (its art is {path.stem[: -len(PREVIEW_SUFFIX)]}.png)"
                )
            if existing := [t for t in targets if t.exists()]:
                raise ValueError(f"{existing[0]} exists; nothing is overwritten")
            result = snap_image(read_image(path), colours, (side, side), pixel_scale)
        except (ValueError, NoGridError) as error:
            refused.append(f"{path}: {error}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        _write_png(result.art, targets[0])
        if preview:
            _write_png(upscale_nearest(result.art[None], preview_scale)[0], targets[1])
        written += targets
        log.debug("%s: %s", path, result.grid.describe())
    return SnapOutcome(written, refused)


def normalise_argv(argv: list[str]) -> list[str]:
    """``a.png dir/ --palette-from D --preview`` -> ``--inputs ["a.png","dir/"] --palette_from D --preview=true``:
    positional inputs and dashed option names, which jsonargparse's function parser does not take."""
    inputs, rest = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            inputs.append(arg)
        elif arg == "-h":
            rest.append(arg)
        else:
            name, equals, value = arg.partition("=")
            name = "--" + name.lstrip("-").replace("-", "_")
            if equals:
                rest.append(f"{name}={value}")
            elif name in ("--help", "--preview"):
                rest.append(name if name == "--help" else "--preview=true")
            else:  # an option and its value
                rest += [name, *argv[i + 1 : i + 2]]
                i += 1
        i += 1
    return (["--inputs", json.dumps(inputs)] if inputs else []) + rest


def command(argv: list[str]) -> None:
    from bespoke_pl.commands.parsing import run_command

    outcome = run_command("snap", snap_images, normalise_argv(argv), as_positional=False)
    for line in outcome.refused:
        print(f"skipped {line}")
    arts = [p for p in outcome.written if not p.stem.endswith(PREVIEW_SUFFIX)]
    print(
        f"wrote {len(arts)} images to {arts[0].parent if arts else '(nothing)'}; skipped {len(outcome.refused)}"
    )
