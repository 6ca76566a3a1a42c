"""The one snap of the project: an image of pixel art (decoded by our sampler, or made by any generator at
any size) -> the exact art, locked to the training palette.

Three steps: find the grid (:func:`~bespoke_pl.pixelart.find_grid.find_grid`; skipped where the grid is
known, as for the trainer's own images at 24k px), reduce each cell to the colour most of it agrees on
(:func:`~bespoke_pl.pixelart.grid.reduce_blocks` on the cell's samples), and lock every art pixel to the
palette by sRGB distance (:func:`~bespoke_pl.pixelart.colour.lock_to_palette`). ``fit``'s samples, ``generate``,
``evaluate``, the VAE round trip, the ``snap`` command and the ComfyUI node all come through here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bespoke_pl.pixelart.colour import LOCK_SPACE, ColourSpace, lock_to_palette
from bespoke_pl.pixelart.find_grid import MIN_CONTRAST, Grid, cell_samples, find_grid
from bespoke_pl.pixelart.grid import reduce_blocks

TOLERANCE = 10  # levels per channel at which two pixels of a clean decode count as one colour


@dataclass
class Snapped:
    """One image snapped: the art (3, R, C) uint8, before and after the palette lock, and the grid used."""

    snapped: torch.Tensor
    art: torch.Tensor
    grid: Grid


def reduce_cells(images: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Reduce each cell of ``grid`` to one pixel: uint8 (B, 3, H, W) -> (B, 3, rows, columns).

    The cells' samples (:func:`~bespoke_pl.pixelart.find_grid.cell_samples`) form a regular image of
    m x m blocks, reduced by :func:`~bespoke_pl.pixelart.grid.reduce_blocks`; on an exact integer grid
    that image is the input itself, so the trainer's images reduce exactly as they always did. Two pixels
    count as one colour within :data:`TOLERANCE` levels, or 3 sigma of the image's noise if that is more.
    """
    rows, columns, m = cell_samples(grid, images.shape[-2], images.shape[-1])
    rows, columns = rows.to(images.device), columns.to(images.device)
    regular = images.index_select(-2, rows).index_select(-1, columns)
    return reduce_blocks(regular, m, max(TOLERANCE, round(3 * noise_level(regular))))


def noise_level(images: torch.Tensor) -> float:
    """The standard deviation of per-pixel noise in uint8 images, in levels, from the median absolute
    difference of horizontal neighbours (most neighbours of upscaled art share a cell; for Gaussian noise
    the median of |x1 - x2| is 0.954 sigma)."""
    step = images[..., 1:].float() - images[..., :-1].float()
    return float(step.abs().median()) / 0.954


def reduce_to_grid(raw: torch.Tensor, k: int) -> torch.Tensor:
    """Images generated at 24k px, on the known grid of k x k blocks -> their art (B, 3, H / k, W / k)."""
    h, w = raw.shape[-2:]
    if h % k or w % k:
        raise ValueError(f"image size {h}x{w} is not a multiple of pixel_scale {k}")
    return reduce_cells(raw, Grid.exact(k, h // k, w // k))


def lock(art: torch.Tensor, palette: torch.Tensor | None, space: ColourSpace = LOCK_SPACE) -> torch.Tensor:
    """``art`` locked to ``palette`` in ``space``; unchanged without a palette."""
    return lock_to_palette(art, palette, space) if palette is not None else art


def snap_image(
    image: torch.Tensor,
    palette: torch.Tensor | None,
    cells: tuple[int, int] = (24, 24),
    pixel_scale: float | None = None,
    grid: Grid | None = None,
    min_contrast: float = MIN_CONTRAST,
    space: ColourSpace = LOCK_SPACE,
) -> Snapped:
    """Snap one image of any size to its art.

    Args:
        image: uint8 (3, H, W).
        palette: uint8 (P, 3) colours to lock to; None keeps the reduced colours.
        cells: The art's rows and columns.
        pixel_scale: Image pixels per art pixel, if known (a hint: the phase is still found).
        grid: The grid, if known (nothing is searched then).
        min_contrast: The weakest grid accepted (:func:`~bespoke_pl.pixelart.find_grid.find_grid`).
        space: The colour distance of the lock.

    Raises:
        NoGridError: No grid in the image; the message says what was measured.
    """
    grid = grid or find_grid(image, cells, pixel_scale, min_contrast)
    snapped = reduce_cells(image[None], grid)
    return Snapped(snapped[0], lock(snapped, palette, space)[0], grid)


def to_art(
    raw: torch.Tensor, k: int, palette: torch.Tensor | None = None, snap: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images generated at 24k px on a known grid -> ``(snapped, art)``, for the samples of a run,
    ``generate``, ``evaluate`` and the round trip alike.

    ``snapped`` has each k x k cell reduced to the colour most of it agrees on; ``art`` is ``snapped``
    locked to the palette (the same tensor without one). Arguments as :func:`snap_and_lock`.
    """
    if not snap:
        return raw, lock(raw, palette)
    snapped = reduce_to_grid(raw, k)
    return snapped, lock(snapped, palette)


def snap_and_lock(
    raw: torch.Tensor, k: int, palette: torch.Tensor | None = None, snap: bool = True
) -> torch.Tensor:
    """Turn decoded samples into pixel art: reduce each k x k block to one pixel, then lock to the palette.

    Args:
        raw: uint8 (B, 3, 24k, 24k) decoded images.
        k: The pixel scale the images were generated at (block size).
        palette: uint8 (P, 3) colours to lock to; None leaves the colours as reduced.
        snap: Reduce to the art grid; False keeps the full resolution (and locks every pixel).

    Returns:
        uint8 (B, 3, 24, 24) with ``snap``, else (B, 3, 24k, 24k).
    """
    return to_art(raw, k, palette, snap)[1]
