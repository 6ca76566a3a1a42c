"""Can the VAE represent the training art pixel-perfectly? Encode, decode, snap, and count exact pixels.

Each training image is nearest-upscaled by k, encoded (posterior mean), decoded, reduced to the 24x24 grid
and locked to the training palette (:func:`bespoke_pl.pixelart.snap.snap_and_lock`), then compared with the
original. If the round trip already loses pixels at some k, no amount of training brings them back: the
check runs at the start of ``fit`` for the chosen ``pixel_scale`` (:class:`RoundTripCheck`), and
``python -m bespoke_pl roundtrip`` compares several k before a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from bespoke_pl.pixelart.grid import to_model_range, to_uint8, upscale_nearest
from bespoke_pl.pixelart.palette import palette_of
from bespoke_pl.pixelart.snap import snap_and_lock

log = logging.getLogger(__name__)


@dataclass
class RoundTrip:
    """The result of one round trip of a set of images at one pixel scale."""

    pixel_scale: int
    images: int
    pixels_exact: float  # share of art pixels equal to the original after snap + palette lock
    images_exact: float  # share of images with every pixel equal
    mean_abs_error: float  # decoded vs upscaled original before snapping, in 0-255 levels

    def line(self) -> str:
        return (
            f"k={self.pixel_scale:<3d} {self.images:4d} images  {100 * self.pixels_exact:6.2f}% pixels exact  "
            f"{100 * self.images_exact:6.1f}% images exact  mean abs error {self.mean_abs_error:5.2f}/255"
        )


# The VAE runs in float32 and keeps 128-256 channels at full resolution, so a call's activations grow with
# its pixels: 16 images of 960 px (SDXL's k = 40) took over 20 GB to encode and were killed on a 24 GB
# machine before training began; decoding 4 of them peaked at 11.3 GB, one at 4.3 GB. Every VAE call stays
# within the pixels of 16 images at 192 px (k = 8), the batch the caches always used, and larger images go
# fewer at a time, down to one: the module's encode_images (caches, validation, uncached steps), the round
# trip, and the decode of samples and `generate` (diffusion.sampling.generate).
VAE_PIXELS_PER_CALL = 16 * 192 * 192


def images_per_vae_call(side: int, most: int) -> int:
    """How many ``side`` x ``side`` px images one VAE call takes: at most ``most``, at least 1."""
    return max(1, min(most, VAE_PIXELS_PER_CALL // (side * side)))


@torch.no_grad()
def vae_round_trip(
    vae: nn.Module, images: torch.Tensor, k: int, palette: torch.Tensor | None = None, batch_size: int = 8
) -> RoundTrip:
    """Round-trip uint8 art (N, 3, 24, 24) through a diffusers ``AutoencoderKL``-like VAE at pixel scale k.

    Args:
        vae: Has ``encode(x).latent_dist.mean`` and ``decode(z).sample`` on [-1, 1] images.
        images: The training art.
        k: Nearest-upscale factor before encoding.
        palette: Colours to lock to after snapping; default the palette of ``images``.
        batch_size: Images per VAE call at most (fewer at large k: :func:`images_per_vae_call`).
    """
    palette = palette_of(images) if palette is None else palette
    parameter = next(vae.parameters())
    exact_pixels = exact_images = 0
    error = 0.0
    batch_size = images_per_vae_call(images.shape[-1] * k, batch_size)
    for start in range(0, len(images), batch_size):
        art = images[start : start + batch_size]
        big = upscale_nearest(art, k)
        x = to_model_range(big).to(parameter.device, parameter.dtype)
        decoded = to_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample).cpu()
        error += (decoded.float() - big.float()).abs().mean((1, 2, 3)).sum().item()
        same = (snap_and_lock(decoded, k, palette) == art).all(1)  # (b, 24, 24)
        exact_pixels += int(same.sum())
        exact_images += int(same.flatten(1).all(1).sum())
    n = len(images)
    pixels = n * images.shape[-1] * images.shape[-2]
    return RoundTrip(k, n, exact_pixels / pixels, exact_images / n, error / n)
