"""At the start of ``fit``: can the VAE represent the training art at the run's ``pixel_scale``?"""

from __future__ import annotations

import logging

import lightning as L

from bespoke_pl.data.datamodule import training_pairs
from bespoke_pl.pixelart.roundtrip import RoundTrip, vae_round_trip

log = logging.getLogger(__name__)


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
        self.result = vae_round_trip(pl_module.vae, images, k, pairs.palette)
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
