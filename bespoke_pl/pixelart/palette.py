"""Palettes and the OKLab colour space the quality measures use.

Distances are Euclidean in OKLab (Ottosson 2020), where equal steps look about equally different; OKLab
lightness runs 0-1 and a distance of about 0.02 is the smallest difference people notice. The palette lock
of the snap measures sRGB distance instead (:mod:`bespoke_pl.pixelart.colour` says why).
Everything here is plain torch on uint8 (B, 3, H, W) images and (P, 3) palettes.
"""

from __future__ import annotations

import torch


def palette_of(images: torch.Tensor) -> torch.Tensor:
    """The distinct colours (P, 3) uint8 of a set of uint8 images (N, 3, H, W), sorted for stable output."""
    return torch.unique(images.permute(0, 2, 3, 1).reshape(-1, images.shape[1]), dim=0)


def palette_to_hex(palette: torch.Tensor) -> list[str]:
    """(P, 3) uint8 colours -> ``["#rrggbb", ...]`` (the form stored in LoRA metadata)."""
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in palette.tolist()]


def palette_from_hex(colours: list[str]) -> torch.Tensor:
    """``["#rrggbb", ...]`` -> (P, 3) uint8."""
    return torch.tensor(
        [[int(c.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4)] for c in colours], dtype=torch.uint8
    )


# sRGB (linear) -> LMS cone response, and cube-rooted LMS -> Lab, as published with OKLab.
_RGB_TO_LMS = torch.tensor(
    [
        [0.4122214708, 0.5363325363, 0.0514459929],
        [0.2119034982, 0.6806995451, 0.1073969566],
        [0.0883024619, 0.2817188376, 0.6299787005],
    ],
)
_LMS_TO_LAB = torch.tensor(
    [
        [0.2104542553, 0.7936177850, -0.0040720468],
        [1.9779984951, -2.4285922050, 0.4505937099],
        [0.0259040371, 0.7827717662, -0.8086757660],
    ],
)


def _srgb_levels_to_linear() -> torch.Tensor:
    """The 256 sRGB levels decoded to linear light (a lookup table, float64)."""
    c = torch.arange(256, dtype=torch.float64) / 255
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


_LINEAR = _srgb_levels_to_linear().float()  # float32 from here on: plenty for distances of ~0.01


def linear_rgb(colours: torch.Tensor) -> torch.Tensor:
    """uint8 sRGB colours (..., 3) -> linear-light RGB float32 (..., 3) in [0, 1]."""
    if colours.dtype != torch.uint8:
        raise TypeError(f"expected uint8 colours, got {colours.dtype}")
    return _LINEAR.to(colours.device)[colours.long()]


def oklab(colours: torch.Tensor) -> torch.Tensor:
    """uint8 sRGB colours (..., 3) -> OKLab float32 (..., 3): L in [0, 1], a and b roughly in [-0.4, 0.4].

    Args:
        colours: uint8 tensor whose last dimension is R, G, B.
    """
    if colours.dtype != torch.uint8:
        raise TypeError(f"expected uint8 colours, got {colours.dtype}")
    if colours.shape[-1] != 3:
        raise ValueError(f"expected RGB in the last dimension, got shape {tuple(colours.shape)}")
    linear = _LINEAR.to(colours.device).index_select(0, colours.reshape(-1).long()).view(-1, 3)
    lms = _mix(linear, _RGB_TO_LMS.to(colours.device)).clamp_min(0).pow(1 / 3)
    return _mix(lms, _LMS_TO_LAB.to(colours.device)).view(colours.shape)


def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``x @ matrix.T`` for (N, 3) x, as three element-wise products: a BLAS call for a 3x3 matrix costs
    far more than the arithmetic (and stalls when the machine is busy)."""
    return x[:, :1] * matrix[:, 0] + x[:, 1:2] * matrix[:, 1] + x[:, 2:] * matrix[:, 2]


def image_oklab(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> OKLab (B, H, W, 3)."""
    return oklab(images.permute(0, 2, 3, 1))


def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (..., N, M) between OKLab colours a (..., N, 3) and b (..., M, 3).

    Element-wise for small sets (``torch.cdist``'s matmul form is off by ~1e-4 for equal colours).
    """
    return (a.unsqueeze(-2) - b.unsqueeze(-3)).square().sum(-1).sqrt()


def packed_colours(images: torch.Tensor) -> torch.Tensor:
    """Each pixel's colour as one integer ``0xRRGGBB``: uint8 (B, 3, H, W) -> int64 (B, H, W)."""
    weights = torch.tensor([1 << 16, 1 << 8, 1], device=images.device).view(1, 3, 1, 1)
    return (images.long() * weights).sum(1)


def nearest_in_palette(images: torch.Tensor, palette: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every pixel, the index of the nearest palette colour and the OKLab distance to it.

    Args:
        images: uint8 (B, 3, H, W).
        palette: uint8 (P, 3), P >= 1.

    Returns:
        ``(index, distance)``: long (B, H, W) and float32 (B, H, W).
    """
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0:
        raise ValueError(f"palette must be (P, 3) with P >= 1 colours, got shape {tuple(palette.shape)}")
    b, _, h, w = images.shape
    # Distinct colours only: a 192 px image of a few dozen colours needs a few dozen searches, not 36,864.
    codes, inverse = torch.unique(packed_colours(images).reshape(-1), return_inverse=True)
    colours = torch.stack([codes >> 16, (codes >> 8) & 0xFF, codes & 0xFF], dim=-1).to(torch.uint8)
    lab = oklab(colours)
    targets = oklab(palette.to(images.device))
    index = torch.empty(len(colours), dtype=torch.long, device=images.device)
    distance = torch.empty(len(colours), dtype=torch.float32, device=images.device)
    chunk = max(1, (1 << 24) // len(palette))  # bounds the (chunk, P) distance matrix
    for start in range(0, len(colours), chunk):
        part = lab[start : start + chunk]
        # The nearest by the fast matmul form, then that one pair measured element-wise.
        nearest = torch.cdist(part, targets).argmin(1)
        index[start : start + chunk] = nearest
        distance[start : start + chunk] = (part - targets[nearest]).norm(dim=-1)
    # A palette colour is at distance 0 from itself, whatever float rounding says.
    distance[(colours == palette.to(images.device)[index]).all(1)] = 0
    return index[inverse].view(b, h, w), distance[inverse].view(b, h, w)
