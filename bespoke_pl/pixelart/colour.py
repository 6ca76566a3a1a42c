"""Colour distances for the palette lock: which palette colour a decoded, noisy pixel was meant to be.

Candidates, all on uint8 sRGB: ``srgb`` and ``linear`` (Euclidean in the encoded or linear-light RGB cube),
``oklab`` (Ottosson 2020), ``cielab`` (CIE 1976 L*a*b*, D65, whose distance is ΔE76) and ``ciede2000``
(ΔE2000 on CIELAB). OKLab's lightness is a pure cube root of linear light, whose slope is unbounded at black,
so a black pixel lifted by a little noise, (8, 8, 8), lands nearer a dark brown such as #1c1a00 than black.
CIELAB's lightness has a linear segment below 0.9% luminance and makes no such mistake. The lock's choice,
:data:`LOCK_SPACE`, was measured with ``benchmarks/snap.py --spaces`` (docs/snap.md has the figures): plain
sRGB distance. What the lock corrects is not a difference people see but the noise a decoder, a JPEG
encoder or a colour cast adds, and that noise is roughly even in the 8-bit sRGB levels, in the dark as in
the light; perceptual spaces stretch the dark levels and there mistake a little noise for another colour.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from bespoke_pl.pixelart.palette import linear_rgb, oklab

ColourSpace = Literal["srgb", "linear", "oklab", "cielab", "ciede2000"]
SPACES: tuple[str, ...] = ("srgb", "linear", "oklab", "cielab", "ciede2000")
LOCK_SPACE: ColourSpace = "srgb"  # measured best on every set of benchmarks/snap.py; docs/snap.md

# Linear sRGB -> CIE XYZ (D65), and the D65 white, as in IEC 61966-2-1.
_RGB_TO_XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])
_DELTA = 6 / 29


def cielab(colours: torch.Tensor) -> torch.Tensor:
    """uint8 sRGB colours (..., 3) -> CIELAB float32 (..., 3): L* in [0, 100], a* and b* about ±100."""
    xyz = (linear_rgb(colours) @ _RGB_TO_XYZ.to(colours.device).T) / _WHITE.to(colours.device)
    # The cube root, with CIE's linear segment near black where the cube root's slope would explode.
    f = torch.where(xyz > _DELTA**3, xyz.clamp_min(1e-12).pow(1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
    lightness = 116 * f[..., 1] - 16
    return torch.stack([lightness, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], dim=-1)


def coordinates(colours: torch.Tensor, space: ColourSpace) -> torch.Tensor:
    """uint8 colours (..., 3) -> float32 coordinates (..., 3) in ``space`` (CIELAB for ``ciede2000``)."""
    if space == "srgb":
        return colours.float()
    if space == "linear":
        return linear_rgb(colours)
    if space == "oklab":
        return oklab(colours)
    if space in ("cielab", "ciede2000"):
        return cielab(colours)
    raise ValueError(f"unknown colour space {space!r}; one of {', '.join(SPACES)}")


def ciede2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """ΔE2000 (Sharma, Wu and Dalal 2005) between CIELAB colours; broadcasts (..., 3) against (..., 3)."""
    l1, a1, b1 = lab1.unbind(-1)
    l2, a2, b2 = lab2.unbind(-1)
    c_mean = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    g = 0.5 * (1 - torch.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1, a2 = a1 * (1 + g), a2 * (1 + g)
    c1, c2 = torch.hypot(a1, b1), torch.hypot(a2, b2)
    h1 = torch.atan2(b1, a1) % (2 * math.pi)
    h2 = torch.atan2(b2, a2) % (2 * math.pi)
    dl, dc = l2 - l1, c2 - c1
    dh = h2 - h1
    dh = torch.where(dh > math.pi, dh - 2 * math.pi, torch.where(dh < -math.pi, dh + 2 * math.pi, dh))
    dh = torch.where(c1 * c2 == 0, torch.zeros_like(dh), dh)
    big_h = 2 * torch.sqrt(c1 * c2) * torch.sin(dh / 2)
    l_mean, c_mean = (l1 + l2) / 2, (c1 + c2) / 2
    h_sum = h1 + h2
    h_mean = torch.where((h1 - h2).abs() > math.pi, h_sum + 2 * math.pi, h_sum) / 2
    h_mean = torch.where(c1 * c2 == 0, h_sum, h_mean)
    t = (
        1
        - 0.17 * torch.cos(h_mean - math.radians(30))
        + 0.24 * torch.cos(2 * h_mean)
        + 0.32 * torch.cos(3 * h_mean + math.radians(6))
        - 0.20 * torch.cos(4 * h_mean - math.radians(63))
    )
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / torch.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * c_mean
    s_h = 1 + 0.015 * c_mean * t
    rotation = -2 * torch.sqrt(c_mean**7 / (c_mean**7 + 25.0**7))
    rotation = rotation * torch.sin(
        math.radians(60) * torch.exp(-(((torch.rad2deg(h_mean) - 275) / 25) ** 2))
    )
    terms = (dl / s_l) ** 2 + (dc / s_c) ** 2 + (big_h / s_h) ** 2 + rotation * (dc / s_c) * (big_h / s_h)
    return terms.clamp_min(0).sqrt()


def nearest_colours(
    colours: torch.Tensor, palette: torch.Tensor, space: ColourSpace = LOCK_SPACE
) -> torch.Tensor:
    """For each of N uint8 colours (N, 3), the index (N,) of the nearest of the palette's (P, 3) in ``space``.

    Exact palette colours always map to themselves, whatever float rounding says.
    """
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0:
        raise ValueError(f"palette must be (P, 3) with P >= 1 colours, got shape {tuple(palette.shape)}")
    palette = palette.to(colours.device)
    points, targets = coordinates(colours, space), coordinates(palette, space)
    index = torch.empty(len(colours), dtype=torch.long, device=colours.device)
    chunk = max(1, (1 << 22) // len(palette))  # bounds the (chunk, P) distance matrix
    for start in range(0, len(colours), chunk):
        part = points[start : start + chunk, None]  # (n, 1, 3) against (P, 3)
        distance = ciede2000(part, targets) if space == "ciede2000" else (part - targets).square().sum(-1)
        index[start : start + chunk] = distance.argmin(1)
    same = (colours[:, None] == palette).all(-1)  # (N, P)
    return torch.where(same.any(1), same.float().argmax(1), index)


def lock_to_palette(
    images: torch.Tensor, palette: torch.Tensor, space: ColourSpace = LOCK_SPACE
) -> torch.Tensor:
    """Replace every pixel of uint8 images (B, 3, H, W) by its nearest palette colour in ``space``.

    Args:
        images: uint8 (B, 3, H, W).
        palette: uint8 (P, 3), e.g. the training set's (:func:`~bespoke_pl.pixelart.palette.palette_of`).
        space: The colour distance; the default is the one measured best (:data:`LOCK_SPACE`).
    """
    b, _, h, w = images.shape
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3)
    # Distinct colours only: an image of a few dozen colours needs a few dozen searches, not one a pixel.
    colours, inverse = torch.unique(pixels, dim=0, return_inverse=True)
    palette = palette.to(images.device)
    locked = palette[nearest_colours(colours, palette, space)][inverse]
    return locked.view(b, h, w, 3).permute(0, 3, 1, 2).contiguous()
