"""The PyPI cleanup tools for AI pixel art, each given its best configuration: the true cell size where it
takes one, the training palette where it takes one, and otherwise its output locked to the palette (sRGB
nearest) afterwards, so no tool loses for not knowing the palette. Output of another size than the art is
nearest-resized to it. Install them with ``pip install -e .[bench]``; an absent tool is skipped with a note.
"""

from __future__ import annotations

import importlib.util
import io
import logging
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from bespoke_pl.pixelart.colour import lock_to_palette
from bespoke_pl.pixelart.palette import palette_to_hex

# name -> (module to import, what it is given)
PEERS = {
    "unfake": ("unfake", "scale + palette, palette lock after"),
    "ai2pixelart": ("ai2pixelart", "cell size + palette"),
    "proper-pixel-art": ("proper_pixel_art", "scale, palette lock after"),
    "pixel-snapper": ("pixel_snapper", "palette size, palette lock after"),
}


def available() -> dict[str, str]:
    """Installed peers -> what they are given; absent ones are left out."""
    return {name: given for name, (module, given) in PEERS.items() if importlib.util.find_spec(module)}


def _to_art(array: np.ndarray, palette: torch.Tensor, cells: int, lock: bool) -> torch.Tensor:
    image = Image.fromarray(np.ascontiguousarray(array[..., :3]).astype(np.uint8), "RGB")
    if image.size != (cells, cells):
        image = image.resize((cells, cells), Image.NEAREST)
    art = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    return (lock_to_palette(art, palette, "srgb") if lock else art)[0]


def run_unfake(image: np.ndarray, cell: float, palette: torch.Tensor) -> np.ndarray:
    from unfake import process_image_sync

    result = process_image_sync(
        Image.fromarray(image),
        manual_scale=max(1, round(cell)),
        max_colors=min(len(palette), 255),  # below 256 it quantizes, to the fixed palette when given one
        fixed_palette=palette_to_hex(palette),
        cleanup={"morph": False, "jaggy": False},
    )
    return np.array(result["image"].convert("RGB"))


def run_ai2pixelart(image: np.ndarray, cell: float, palette: torch.Tensor) -> np.ndarray:
    from ai2pixelart.pipeline import clean

    return clean(image, palette=palette.numpy(), pitch=(cell, cell)).image


def run_proper_pixel_art(image: np.ndarray, cell: float, palette: torch.Tensor) -> np.ndarray:
    from proper_pixel_art.config import PixelateConfig
    from proper_pixel_art.image import pixelate

    config = PixelateConfig(pixel_width=max(1, round(cell)))
    return np.array(pixelate(Image.fromarray(image), config).image.convert("RGB"))


def run_pixel_snapper(image: np.ndarray, cell: float, palette: torch.Tensor) -> np.ndarray:
    import pixel_snapper

    config = pixel_snapper.PixelSnapperConfig(k_colors=min(len(palette), 64))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    out = pixel_snapper.process_image(buffer.getvalue(), config)
    return np.array(Image.open(io.BytesIO(bytes(out))).convert("RGB"))


RUNNERS: dict[str, tuple[Callable, bool]] = {  # runner, lock its output to the palette afterwards
    # unfake maps to its fixed palette only when the image has more colours than the palette: lock after too
    "unfake": (run_unfake, True),
    "ai2pixelart": (run_ai2pixelart, False),  # maps to the palette itself
    "proper-pixel-art": (run_proper_pixel_art, True),
    "pixel-snapper": (run_pixel_snapper, True),
}


def peer_art(
    name: str, image: torch.Tensor, cell: float, palette: torch.Tensor, cells: int = 24
) -> torch.Tensor | None:
    """``name``'s art (3, cells, cells) of uint8 ``image`` (3, H, W), or None where the tool fails on it."""
    run, lock = RUNNERS[name]
    try:
        array = run(image.permute(1, 2, 0).numpy(), cell, palette)
    except Exception as error:  # noqa: BLE001 (a peer's failure on one image counts as a wrong image)
        logging.getLogger(__name__).warning("%s failed on a %d px image: %r", name, image.shape[-1], error)
        return None
    return _to_art(np.asarray(array), palette, cells, lock)
