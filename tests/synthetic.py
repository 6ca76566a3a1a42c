"""Synthetic decodes for the pixel-art tests: what a VAE gives back, roughly, without a VAE."""

import torch
import torch.nn.functional as F

from bespoke_pl.pixelart.grid import upscale_nearest


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of uint8 images -> float, edges replicated."""
    t = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    x = F.pad(images.float(), (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(x, kernel.view(1, 1, 5, 1).repeat(3, 1, 1, 1), groups=3)


def decoded_like(art: torch.Tensor, k: int, noise: float, sigma: float, seed: int = 0) -> torch.Tensor:
    """What a VAE gives back, roughly: the upscaled art, slightly blurred, plus noise on every pixel."""
    g = torch.Generator().manual_seed(seed)
    big = blur(upscale_nearest(art, k), sigma)
    return (big + torch.randn(big.shape, generator=g) * noise).clamp(0, 255).round().to(torch.uint8)
