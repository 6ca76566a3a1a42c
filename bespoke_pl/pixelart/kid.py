"""KID without a download: the kernel distance on fixed pixel-art features instead of Inception's.

torchmetrics' ``KernelInceptionDistance`` accepts any feature module; :class:`PixelFeatures` is OKLab
averaged over an 8x8 grid (:func:`bespoke_pl.pixelart.quality.pixel_features`), standardised on the training set.
It sees layout and colour, not identity: enough to rank held-out heads before torsos before noise.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.image.kid import KernelInceptionDistance

from bespoke_pl.pixelart.quality import pixel_features


class PixelFeatures(nn.Module):
    """The download-free KID features: :func:`bespoke_pl.pixelart.quality.pixel_features`, standardised per
    dimension with the training set's mean and spread (so the polynomial kernel sees unit-scale values,
    as with Inception features).

    Args:
        train_images: uint8 (N, 3, H, W) training art, for the standardisation.
    """

    def __init__(self, train_images: torch.Tensor) -> None:
        super().__init__()
        features = pixel_features(train_images).double()
        self.register_buffer("mean", features.mean(0))
        spread = features.std(0) if len(features) > 1 else torch.ones_like(features[0])
        self.register_buffer("std", spread.clamp_min(1e-3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (pixel_features(images).double() - self.mean) / self.std


class PixelKID(KernelInceptionDistance):
    """Kernel distance between generated and training images on :class:`PixelFeatures` (no download).

    The training features are computed once and kept across resets. Small sets give noisy values; the
    subset size shrinks to the smaller set, and fewer than 2 generated images give NaN.

    Args:
        train_images: uint8 (N, 3, H, W) training art.
        subset_size: Images per KID subset (capped by the set sizes).
        subsets: Number of random subsets averaged.
    """

    def __init__(
        self, train_images: torch.Tensor, subset_size: int = 50, subsets: int = 50, **kwargs
    ) -> None:
        with warnings.catch_warnings():  # the "stores all features" warning: ours are 192 floats each
            warnings.simplefilter("ignore", UserWarning)
            features = PixelFeatures(train_images)
            super().__init__(features, subsets, subset_size, reset_real_features=False, **kwargs)
        super().update(train_images, real=True)

    def update(self, images: torch.Tensor) -> None:
        super().update(images, real=False)

    def compute(self) -> dict[str, torch.Tensor]:
        real, fake = sum(len(f) for f in self.real_features), sum(len(f) for f in self.fake_features)
        requested, generator_state = self.subset_size, torch.random.get_rng_state()
        self.subset_size = min(requested, real, fake)
        try:
            if self.subset_size < 2:
                return {"kid": torch.tensor(float("nan"))}
            torch.manual_seed(
                0
            )  # the same subsets every time, so epochs compare (and training's RNG is kept)
            mean, _ = super().compute()
            return {"kid": mean.float()}
        finally:
            self.subset_size = requested
            torch.random.set_rng_state(generator_state)
