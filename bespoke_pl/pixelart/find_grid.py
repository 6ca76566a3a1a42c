"""Find the art grid in an image from any generator: the cell size (1024 / 24 = 42.67 px is fine) and the
phase (where the first cell starts), per axis, from where the image's edges are.

Pixel art upscaled by any factor has its colour changes on the cell boundaries, and nowhere else. Summing
the absolute differences of neighbouring columns over all rows gives an edge profile along x; a comb of
lines ``start + i * cell`` scores the mean profile under its lines. The best comb among cell sizes near
``side / cells`` (or the ``pixel_scale`` hint) and every phase in quarter pixels is the grid, and its score
over the profile's mean (the *contrast*) says whether there is a grid at all: about 1 for a photo or noise,
several for upscaled art even when blurred, noised or JPEG-compressed. Plain torch on uint8 (3, H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Edges on the best comb must be this many times the image's mean edge strength; measured in
# benchmarks/snap.py (docs/snap.md): degraded art scores 1.8 and up, noise and smooth images 1.0-1.1.
MIN_CONTRAST = 1.5
# Cell sizes searched around side / cells: a generator may pad or crop the art by a few per cent.
CELL_RANGE = 0.06


class NoGridError(ValueError):
    """No art grid in an image; the message says what was measured."""


@dataclass(frozen=True)
class Grid:
    """Where the art's cells lie in an image, per axis (y, x).

    Attributes:
        cells: Art rows and columns.
        cell: Image pixels per art pixel (float: 1024 px for 24 cells is 42.67).
        start: Where the first cell begins, in image pixels (negative: the grid is shifted up or left and
            the first cell is partly outside the image).
        contrast: The edges on the grid lines over the image's mean edge strength; inf for a grid that was
            given, not found.
    """

    cells: tuple[int, int]
    cell: tuple[float, float]
    start: tuple[float, float] = (0.0, 0.0)
    contrast: tuple[float, float] = (math.inf, math.inf)

    @classmethod
    def exact(cls, k: int, rows: int, columns: int) -> Grid:
        """The grid of art nearest-upscaled by an integer k with nothing added: the trainer's own images."""
        return cls((rows, columns), (float(k), float(k)))

    def describe(self) -> str:
        """``cell 42.67 x 42.67 px, offset (0.0, 3.0) px, edges 5.1 / 4.9 x the mean``."""
        return (
            f"cell {self.cell[0]:.2f} x {self.cell[1]:.2f} px, offset ({self.start[0]:.1f}, {self.start[1]:.1f}) "
            f"px, edges {self.contrast[0]:.1f} / {self.contrast[1]:.1f} x the mean"
        )


def edge_profile(image: torch.Tensor, dim: int, window: int = 1) -> torch.Tensor:
    """The edge strength at each boundary along ``dim`` (1: rows, 2: columns) of uint8 (C, H, W).

    The signed colour changes are first averaged over ``window`` pixels along the boundary: an edge of the
    art runs straight along a whole cell, noise does not, so the noise floor drops by sqrt(window).

    Returns float (side + 1,): entry x is the mean absolute colour change between pixels x - 1 and x;
    the image's own borders (0 and side) are 0.
    """
    step = image.float().diff(dim=dim)  # (C, H-1, W) or (C, H, W-1)
    along = 3 - dim  # the axis the boundary runs along
    if window > 1:
        step = step.unfold(along, window, window).mean(-1)
    inner = step.abs().sum(0).mean(along - 1)  # (side - 1,)
    return torch.nn.functional.pad(inner, (1, 1))


def best_comb(profile: torch.Tensor, cells: int, hint: float | None = None) -> tuple[float, float, float]:
    """The comb of lines that best fits an edge profile: ``(cell, start, contrast)`` along one axis.

    Args:
        profile: float (side + 1,), from :func:`edge_profile`.
        cells: How many art pixels span the image (24).
        hint: A known cell size (``pixel_scale``); only the phase is searched then.
    """
    side = len(profile) - 1
    base = side / cells
    if hint is not None:
        sizes = torch.tensor([float(hint)])
    else:  # steps of 1/50 px over the range: the comb's last line then drifts by at most a pixel
        count = max(1, int(2 * CELL_RANGE * base * 50)) + 1
        sizes = torch.linspace(base * (1 - CELL_RANGE), base * (1 + CELL_RANGE), count)
        sizes = sizes[
            (sizes - base).abs().argsort(stable=True)
        ]  # equal scores: the size nearest side / cells
    phases = torch.arange(0, 1, 0.25 / max(base, 1.0))  # fractions of a cell: quarter-pixel steps
    lines = torch.arange(cells + 3, dtype=torch.float32)
    # (S, F, L): every comb's line positions, rounded to the boundary they fall on.
    positions = sizes[:, None, None] * (phases[None, :, None] + lines[None, None, :])
    index = positions.round().long()
    inside = (index > 0) & (index < side)
    values = profile[index.clamp(0, side)] * inside
    score = values.sum(-1) / inside.sum(-1).clamp_min(1)  # (S, F)
    best = int(score.argmax())
    size, phase = float(sizes[best // len(phases)]), float(phases[best % len(phases)])
    mean = float(profile[1:side].mean()) if side > 1 else 0.0
    contrast = float(score.max()) / mean if mean > 0 else 0.0
    # Of the combs' equivalent starts, the one that centres the art's cells on the image.
    first = size * phase
    first += round((side / 2 - cells * size / 2 - first) / size) * size
    return size, first, contrast


def find_grid(
    image: torch.Tensor,
    cells: tuple[int, int] = (24, 24),
    pixel_scale: float | None = None,
    min_contrast: float = MIN_CONTRAST,
) -> Grid:
    """Find the art grid of one image.

    Args:
        image: uint8 (3, H, W).
        cells: The art's rows and columns (the LoRA's ``resolution``).
        pixel_scale: Image pixels per art pixel if known; the phase is still found.
        min_contrast: The weakest grid accepted, as edges on its lines over the mean edge strength.

    Raises:
        NoGridError: The image is smaller than the art, or no comb stands out of its edges.
    """
    _, h, w = image.shape
    if h < cells[0] or w < cells[1]:
        raise NoGridError(f"the image is {w}x{h} px, smaller than the {cells[1]}x{cells[0]} art")
    if (h, w) == tuple(cells):  # already art size: one pixel a cell
        return Grid(cells, (1.0, 1.0))
    found = []
    for dim, n in ((1, cells[0]), (2, cells[1])):
        # Average along half a cell of the other axis: noise averages out, the art's edges do not.
        window = max(1, int((image.shape[3 - dim] / cells[2 - dim]) // 2))
        found.append(best_comb(edge_profile(image, dim, window), n, pixel_scale))
    grid = Grid(
        cells,
        (found[0][0], found[1][0]),
        (found[0][1], found[1][1]),
        (found[0][2], found[1][2]),
    )
    if min(grid.contrast) < min_contrast:
        raise NoGridError(f"no pixel grid found: best fit {grid.describe()} (needs {min_contrast:.1f}x)")
    return grid


def cell_samples(grid: Grid, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pixel rows and columns that sample each cell: ``(rows (R * m,), columns (C * m,), m)``.

    Each cell gets m x m samples, m its size rounded, evenly spread inside it (clamped to the image where a
    shifted grid's outer cells stick out). For an exact integer grid they are exactly the cell's pixels.
    """
    m = max(1, round(max(grid.cell)))
    offsets = (torch.arange(m, dtype=torch.float64) + 0.5) / m

    def axis(n: int, size: float, start: float, side: int) -> torch.Tensor:
        cells = torch.arange(n, dtype=torch.float64)[:, None]
        return (start + (cells + offsets) * size).floor().long().clamp(0, side - 1).reshape(-1)

    return (
        axis(grid.cells[0], grid.cell[0], grid.start[0], height),
        axis(grid.cells[1], grid.cell[1], grid.start[1], width),
        m,
    )
