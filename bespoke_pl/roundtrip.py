"""Can the VAE represent the training art pixel-perfectly? Encode, decode, snap, and count exact pixels.

Each training image is nearest-upscaled by k, encoded (posterior mean), decoded, reduced to the 24x24 grid
and locked to the training palette (:func:`bespoke_pl.palette.snap_and_lock`), then compared with the
original. If the round trip already loses pixels at some k, no amount of training brings them back: the
check runs at the start of ``fit`` for the chosen ``pixel_scale`` (:class:`RoundTripCheck`), and
``python -m bespoke_pl roundtrip`` compares several k before a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch import nn

from bespoke_pl.data import training_pairs
from bespoke_pl.devices import pick_device
from bespoke_pl.palette import snap_and_lock
from bespoke_pl.pixels import palette_of, to_model_range, to_uint8, upscale_nearest

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
        batch_size: Images per VAE call.
    """
    palette = palette_of(images) if palette is None else palette
    parameter = next(vae.parameters())
    exact_pixels = exact_images = 0
    error = 0.0
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


def load_vae(base_model: str, base_config: str | None = None) -> nn.Module:
    """Only the VAE of a base model (a folder or hub id), or the whole base for a single file."""
    from diffusers import AutoencoderKL

    from bespoke_pl.base import load_base, resolve_spec

    source = Path(resolve_spec(base_model)).expanduser()
    if source.is_file():
        return load_base(base_model, "auto", base_config).vae.float()
    vae = AutoencoderKL.from_pretrained(str(source) if source.is_dir() else base_model, subfolder="vae")
    return vae.float().requires_grad_(False).eval()


def roundtrip(
    base_model: str,
    data_root: str,
    scales: list[int] | None = None,
    base_config: str | None = None,
    resolution: int = 24,
    background: str | None = None,
    max_images: int = 0,
    batch_size: int = 8,
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto",
) -> list[RoundTrip]:
    """Round-trip the training images through the base model's VAE at each pixel scale.

    Args:
        base_model: Hub id, local diffusers folder, single file, or ``tiny:sd15`` / ``tiny:sdxl``.
        data_root: The training folder (or ``demo:punks``).
        scales: Pixel scales k to try (default 1 8 16).
        base_config: For a single-file base: where to read component configs from.
        resolution: Side of the training images.
        background: Colour under transparent pixels (as for training).
        max_images: Round-trip only the first N images; 0: all.
        batch_size: Images per VAE call.
        device: ``auto`` (CUDA, else Apple MPS, else CPU), ``cuda``, ``mps`` or ``cpu``.
    """
    from bespoke_pl.data import PixelArtDataModule

    data = PixelArtDataModule(data_root, resolution, background=background, default_caption="")
    images = data.load().images
    images = images[:max_images] if max_images > 0 else images
    vae = load_vae(base_model, base_config).to(pick_device(device))
    palette = palette_of(images)
    results = []
    for k in scales or [1, 8, 16]:
        result = vae_round_trip(vae, images, k, palette, batch_size)
        log.info("VAE round trip %s", result.line())
        results.append(result)
    return results


class RoundTripCheck(L.Callback):
    """At the start of ``fit``, round-trip training images through the VAE at the run's ``pixel_scale``.

    Logs the share of pixels and whole images that come back exact (``roundtrip/*`` in TensorBoard) and
    warns when the representation itself loses pixels. Runs on rank zero, once per fit.

    Args:
        enabled: Run the check.
        max_images: Round-trip the first N training images (0: all); a few dozen say enough.
        warn_below: Warn when fewer than this share of pixels come back exact.
    """

    def __init__(self, enabled: bool = True, max_images: int = 32, warn_below: float = 0.98) -> None:
        self.enabled = enabled
        self.max_images = max_images
        self.warn_below = warn_below
        self.result: RoundTrip | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pairs = training_pairs(trainer)
        if not self.enabled or pairs is None or not trainer.is_global_zero:
            return
        images = pairs.images[: self.max_images] if self.max_images > 0 else pairs.images
        k = pl_module.hparams.pixel_scale
        self.result = vae_round_trip(pl_module.vae, images, k, palette_of(pairs.images))
        log.info("VAE round trip of the training images: %s", self.result.line())
        if self.result.pixels_exact < self.warn_below:
            log.warning(
                "the VAE reproduces only %.1f%% of the training pixels at pixel_scale %d, before any training; "
                "compare scales with `python -m bespoke_pl roundtrip --scales 1 8 16`",
                100 * self.result.pixels_exact,
                k,
            )
        metrics = {
            f"roundtrip/{name}": getattr(self.result, name) for name in ("pixels_exact", "images_exact")
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics | {"roundtrip/mean_abs_error": self.result.mean_abs_error}, step=0)
