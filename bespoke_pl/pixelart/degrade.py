"""What other generators and file formats do to pixel art, reproducibly, for measuring a snap on it.

Each degradation takes uint8 art (N, 3, 24, 24) and returns uint8 images (N, 3, H, W) whose true art is
the input: nearest-upscaled art blurred, noised, colour-shifted, JPEG-compressed, on a grid shifted by a
few pixels, or resized to a side that is no multiple of 24 (1024 px is 42.67 px a cell). Used by
``benchmarks/snap.py`` and the tests of the snap.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bespoke_pl.pixelart.grid import upscale_nearest


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of uint8 (N, 3, H, W), edges replicated, rounded back to uint8."""
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    x = F.pad(images.float(), (radius,) * 4, mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    return x.round().clamp(0, 255).to(torch.uint8)


def add_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Gaussian noise of ``sigma`` levels on every channel of every pixel."""
    g = torch.Generator().manual_seed(seed)
    noisy = images.float() + torch.randn(images.shape, generator=g) * sigma
    return noisy.round().clamp(0, 255).to(torch.uint8)


def colour_shift(images: torch.Tensor, most: int, seed: int = 0) -> torch.Tensor:
    """Each image's channels shifted by a constant of at most ``most`` levels (a generator's colour cast)."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(-most, most + 1, (len(images), 3, 1, 1), generator=g)
    return (images.int() + shift).clamp(0, 255).to(torch.uint8)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """A JPEG round trip at ``quality`` (PIL's encoder, 4:2:0 chroma subsampling, as most tools save)."""
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        out.append(torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1))
    return torch.stack(out)


def shift_grid(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the content down by ``dy`` and right by ``dx`` px, repeating the first rows and columns and
    cropping at the far side, so the image keeps its size and its grid starts ``(dy, dx)`` in."""
    padded = F.pad(images.float(), (dx, 0, dy, 0), mode="replicate").to(torch.uint8)
    return padded[..., : images.shape[-2], : images.shape[-1]]


def resize_nearest(art: torch.Tensor, side: int) -> torch.Tensor:
    """Art nearest-resized to ``side`` px (PIL's nearest filter, as image tools and generators resize)."""
    out = [
        torch.from_numpy(
            np.array(Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB").resize((side, side), Image.NEAREST))
        ).permute(2, 0, 1)
        for a in art
    ]
    return torch.stack(out)


def degrade(art: torch.Tensor, name: str, seed: int = 0) -> torch.Tensor:
    """One of :data:`DEGRADATIONS` applied to uint8 art (N, 3, 24, 24)."""
    return DEGRADATIONS[name](art, seed)


# name -> what it does to 24x24 art. The integer grids use k = 16 (384 px); blur and noise levels are what a
# diffusion decode and an 8-bit save leave (measured on the tiny VAE's decodes: about 3-6 levels of noise).
DEGRADATIONS = {
    "blur": lambda a, s: gaussian_blur(upscale_nearest(a, 16), 1.5),
    "noise": lambda a, s: add_noise(upscale_nearest(a, 16), 12.0, s),
    "colour shift": lambda a, s: colour_shift(upscale_nearest(a, 16), 5, s),
    "jpeg q75": lambda a, s: jpeg(upscale_nearest(a, 16), 75),
    "blur+noise+jpeg": lambda a, s: jpeg(add_noise(gaussian_blur(upscale_nearest(a, 16), 1.5), 8.0, s), 75),
    "shifted (3, 5) px": lambda a, s: shift_grid(add_noise(upscale_nearest(a, 16), 4.0, s), 3, 5),
    "1024 px": lambda a, s: add_noise(resize_nearest(a, 1024), 4.0, s),
    "1000 px": lambda a, s: add_noise(resize_nearest(a, 1000), 4.0, s),
    "1024 px blur+jpeg": lambda a, s: jpeg(gaussian_blur(resize_nearest(a, 1024), 2.0), 75),
}
