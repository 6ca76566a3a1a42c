"""Reading one image file for the snap, refusing what cannot be a still 8-bit picture of art.

Each refusal is a ValueError whose message says the problem in a few words; the caller names the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bit_depth(path: Path) -> int | None:
    """The bit depth in a PNG's header (byte 24, in IHDR), None for other files."""
    with path.open("rb") as f:
        head = f.read(25)
    return head[24] if head.startswith(PNG_SIGNATURE) and len(head) == 25 else None


def read_image(path: str | Path) -> torch.Tensor:
    """A still 8-bit image file -> uint8 (3, H, W) RGB; transparency is composited on black.

    Raises:
        ValueError: An empty file, not an image, an animation, or more than 8 bits a channel.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError("the file is empty (0 bytes)")
    if (depth := png_bit_depth(path)) is not None and depth > 8:
        raise ValueError(f"a {depth}-bit PNG; save it with 8 bits a channel")
    try:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise ValueError(f"an animation of {image.n_frames} frames; snap takes still images")
            if image.mode in ("I", "I;16", "I;16B", "F"):
                raise ValueError(f"{image.mode} pixels (more than 8 bits a channel)")
            rgba = np.array(image.convert("RGBA"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"not a readable image ({error.__class__.__name__})") from error
    rgb = rgba[..., :3].astype(np.float32) * (rgba[..., 3:] / 255.0)
    return torch.from_numpy(rgb.round().astype(np.uint8)).permute(2, 0, 1).contiguous()
