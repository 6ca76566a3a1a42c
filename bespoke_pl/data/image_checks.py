"""One training image's checks (see :mod:`bespoke_pl.data.checks` for the rules and why): decoded to exact
RGB uint8 and its alpha, or the reasons it cannot be used added to the folder's report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bespoke_pl.data.report import DataReport

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bit_depth(path: Path) -> int | None:
    """Bits per channel from a PNG's header (IHDR), or None if the file does not start like a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24]


def alpha_of(image: Image.Image) -> np.ndarray | None:
    """The alpha channel (H, W) uint8 of an image that can be transparent, else None."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return np.asarray(image.convert("RGBA"), dtype=np.uint8)[..., 3]
    return None


def composite(
    image: Image.Image, alpha: np.ndarray | None, background: tuple[int, int, int] | None
) -> np.ndarray:
    """Exact RGB uint8 (H, W, 3); transparent pixels are blended onto ``background`` with integer rounding."""
    if alpha is None:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)  # via RGBA: Pillow warns on P -> RGB here
    if alpha.min() == 255:
        return rgba[..., :3].astype(np.uint8)
    assert background is not None
    a = rgba[..., 3:4]
    bg = np.asarray(background, dtype=np.uint16)
    # alpha 255 keeps the colour exactly, alpha 0 gives the background exactly.
    return ((rgba[..., :3] * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def check_image(
    path: Path, resolution: int, background, report: DataReport, alpha_mask: bool = False
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Decode one PNG to RGB uint8 (H, W, 3) and its alpha (H, W) (None: opaque), or add the reasons it
    cannot be used and return None."""
    name = path.name
    try:
        depth = png_bit_depth(path)
        with Image.open(path) as image:
            image.load()
            if image.format != "PNG":
                report.add(
                    "error", "not a PNG inside (rename or convert it)", f"{name} (it is {image.format})"
                )
                return None
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                report.add(
                    "error",
                    "animated PNG (only its first frame would train; save one frame)",
                    f"{name} ({frames} frames)",
                )
                return None
            if image.size != (resolution, resolution):
                report.refused_sizes[image.size] += 1
                report.add(
                    "error", f"not {resolution}x{resolution}", f"{name} ({image.width}x{image.height})"
                )
                return None
            if depth == 16 or image.mode.startswith("I") or image.mode == "F":
                report.add(
                    "error",
                    "16 bits per channel (save as 8-bit; colours would be cut)",
                    f"{name} ({image.mode})",
                )
                return None
            alpha = alpha_of(image)
            if alpha is not None and alpha.min() < 255:
                if background is None and not alpha_mask:
                    report.add(
                        "error", "transparent but no `background` colour is set (or set `alpha_mask`)", name
                    )
                    return None
                partial = int(((alpha > 0) & (alpha < 255)).sum())
                if partial:
                    onto = (
                        "`background`" if background is not None else "black (`alpha_mask`, no `background`)"
                    )
                    report.add(
                        "warning",
                        f"semi-transparent pixels blended with {onto} into new colours",
                        f"{name} ({partial} px)",
                    )
            if image.mode in ("1", "L", "LA") or (image.mode == "P" and palette_is_grey(image)):
                report.add("warning", "grayscale, trained as grey RGB", f"{name} ({image.mode})")
            return composite(image, alpha, background or (0, 0, 0)), alpha
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        report.add("error", "unreadable image", f"{name} ({error})")
        return None


def palette_is_grey(image: Image.Image) -> bool:
    rgb = np.asarray(image.convert("RGBA"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
