"""Pixel-art quality as torchmetrics ``Metric``s: they accumulate over batches and sum across processes.

Metrics of the art take uint8 24x24 images (B, 3, 24, 24); grid fidelity takes the images as generated
(B, 3, 24k, 24k) and judges how blocky they already are. The training images (N, 3, 24, 24) are the reference: their palette,
silhouettes and the images themselves. :class:`PixelArtQuality` bundles them: its ``update`` takes the
generated images, reduces them to the grid once and hands each metric what it judges; ``compute()`` is
one flat dict.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection

from bespoke_pl.kid import PixelKID
from bespoke_pl.palette import nearest_in_palette
from bespoke_pl.pixels import palette_of, reduce_blocks
from bespoke_pl.quality import (
    TOLERANCE,
    bottom_widths,
    colour_counts,
    copy_distances,
    foreground_masks,
    grid_agreement,
    identical,
    silhouette_ious,
)


class _Sums(Metric):
    """A metric whose state is a handful of running sums (summed across processes on sync)."""

    full_state_update = False
    sums: tuple[str, ...] = ()
    on_raw = False  # True: judges the images as generated (24k px), not the 24x24 art

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in self.sums:
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def mean(self, name: str, over: str = "images") -> torch.Tensor:
        total, count = getattr(self, name), getattr(self, over)
        return (total / count).float() if count > 0 else torch.tensor(float("nan"))


class ColourCount(_Sums):
    """Distinct colours per image on the art grid, and the share of images inside a target range.

    Args:
        colour_range: Inclusive (low, high) colour count a good image has (the originals: 35-50).
    """

    sums = ("colours", "in_range", "images")

    def __init__(self, colour_range: tuple[int, int] = (35, 50), **kwargs) -> None:
        super().__init__(**kwargs)
        self.low, self.high = colour_range

    def update(self, images: torch.Tensor) -> None:
        counts = colour_counts(images)
        self.colours += counts.sum()
        self.in_range += ((counts >= self.low) & (counts <= self.high)).sum()
        self.images += len(counts)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"colours": self.mean("colours"), "colours_in_range": self.mean("in_range")}


class PaletteAdherence(_Sums):
    """Share of pixels within ``tolerance`` (OKLab) of a palette colour, and the mean distance to it.

    Works on any image; :class:`PixelArtQuality` gives it the art grid (the snapped images), so it judges
    the colour the model chose for each art pixel, and grid fidelity judges the blur and noise around it.
    After palette lock it is 1.0 and 0.

    Args:
        palette: uint8 (P, 3) reference colours (the training palette).
        tolerance: OKLab distance that still counts as the palette colour.
    """

    sums = ("within", "distance", "pixels")

    def __init__(self, palette: torch.Tensor, tolerance: float = TOLERANCE, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("palette", palette.clone(), persistent=False)
        self.tolerance = tolerance

    def update(self, images: torch.Tensor) -> None:
        _, distance = nearest_in_palette(images, self.palette)
        self.within += (distance <= self.tolerance).sum()
        self.distance += distance.double().sum()
        self.pixels += distance.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "palette_share": self.mean("within", "pixels"),
            "palette_distance": self.mean("distance", "pixels"),
        }


class GridFidelity(_Sums):
    """How much of each raw image already agrees with its k x k blocks (1.0: perfectly blocky, no blur).

    Args:
        pixel_scale: The block size k.
        tolerance: OKLab distance within which a pixel agrees with its block's colour.
    """

    sums = ("agreement", "images")
    on_raw = True

    def __init__(self, pixel_scale: int, tolerance: float = TOLERANCE, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pixel_scale, self.tolerance = pixel_scale, tolerance

    def update(self, images: torch.Tensor, art: torch.Tensor | None = None) -> None:
        """Args: images (B, 3, 24k, 24k); art: their reduction to the grid, if already at hand."""
        agreement = grid_agreement(images, self.pixel_scale, self.tolerance, art)
        self.agreement += agreement.sum()
        self.images += len(agreement)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"grid_fidelity": self.mean("agreement")}


class HeadShape(_Sums):
    """Heads only: silhouettes against the training silhouettes, and a torso signal at the bottom.

    ``silhouette_iou`` is each image's IoU with the nearest training silhouette, ``silhouette_iou_mean``
    with the majority silhouette (pixels that are foreground in at least half the training images).
    ``torso_ratio`` is the foreground width along the bottom rows over the widest such width in the
    training set (a neck: <= 1); ``torso_share`` the share of images wider than that by > ``torso_margin``.

    Args:
        train_images: uint8 (N, 3, H, W) training art.
        tolerance: OKLab distance from the background within which a pixel is background.
        bottom_rows: How many bottom rows the torso signal looks at.
        torso_margin: Pixels wider than the widest training bottom that count as a torso.
    """

    sums = ("iou", "iou_mean", "ratio", "torsos", "images")

    def __init__(
        self,
        train_images: torch.Tensor,
        tolerance: float = TOLERANCE,
        bottom_rows: int = 3,
        torso_margin: int = 2,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.tolerance, self.bottom_rows, self.torso_margin = tolerance, bottom_rows, torso_margin
        masks = foreground_masks(train_images, tolerance)
        self.register_buffer("train_masks", masks, persistent=False)
        self.register_buffer("majority", masks.float().mean(0, keepdim=True) >= 0.5, persistent=False)
        self.widest_bottom = max(int(bottom_widths(masks, bottom_rows).max()), 1)

    def update(self, images: torch.Tensor, exclude: torch.Tensor | None = None) -> None:
        """Args: images; exclude: per image, a training index to ignore (-1: none), for leave-one-out."""
        masks = foreground_masks(images, self.tolerance)
        ious = silhouette_ious(masks, self.train_masks)
        if exclude is not None:
            rows = torch.nonzero(exclude >= 0).flatten()
            ious[rows, exclude[rows]] = -1.0
        widths = bottom_widths(masks, self.bottom_rows)
        self.iou += ious.amax(1).sum()
        self.iou_mean += silhouette_ious(masks, self.majority)[:, 0].sum()
        self.ratio += (widths.double() / self.widest_bottom).sum()
        self.torsos += (widths > self.widest_bottom + self.torso_margin).sum()
        self.images += len(masks)

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "silhouette_iou": self.mean("iou"),
            "silhouette_iou_mean": self.mean("iou_mean"),
            "torso_ratio": self.mean("ratio"),
            "torso_share": self.mean("torsos"),
        }


class Memorisation(_Sums):
    """Distance to the nearest training image (share of pixels that differ) and copies flagged.

    Args:
        train_images: uint8 (N, 3, H, W) training art.
        tolerance: OKLab distance within which two pixels are the same.
        near_copy: An image differing from a training image in at most this share of pixels is a near copy.
    """

    sums = ("distance", "exact", "near", "images")

    def __init__(
        self,
        train_images: torch.Tensor,
        tolerance: float = TOLERANCE,
        near_copy: float = 0.05,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.register_buffer("train_images", train_images.clone(), persistent=False)
        self.tolerance, self.near_copy = tolerance, near_copy

    def update(self, images: torch.Tensor, exclude: torch.Tensor | None = None) -> None:
        """Args: images; exclude: per image, a training index to ignore (-1: none), for leave-one-out."""
        distance = copy_distances(images, self.train_images, self.tolerance)
        same = identical(images, self.train_images)
        if exclude is not None:
            rows = torch.nonzero(exclude >= 0).flatten()
            distance[rows, exclude[rows]] = float("inf")
            same[rows, exclude[rows]] = False
        nearest = distance.amin(1)
        self.distance += nearest.double().sum()
        self.exact += same.any(1).sum()
        self.near += (nearest <= self.near_copy).sum()
        self.images += len(images)

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "copy_distance": self.mean("distance"),
            "exact_copies": self.mean("exact"),
            "near_copies": self.mean("near"),
        }


class PixelArtQuality(MetricCollection):
    """All pixel-art metrics of images generated at ``pixel_scale`` k, as one collection.

    ``update(images, exclude=None)`` takes the images as generated (B, 3, 24k, 24k), reduces them to the
    24x24 grid once, and gives grid fidelity the generated pixels, all other metrics the art.
    ``compute()`` is one flat dict (keys prefixed with ``prefix``). Grid fidelity is only included for
    k > 1 (a 24x24 image is trivially on its grid).

    Args:
        train_images: uint8 (N, 3, 24, 24) training art: the palette, silhouettes and copies to compare with.
        pixel_scale: Block size k of the images passed to ``update``.
        colour_range: Inclusive colour count range of a good image.
        tolerance: OKLab distance within which two colours are the same.
        bottom_rows: Rows the torso signal looks at.
        torso_margin: Pixels wider than the widest training bottom that count as a torso.
        near_copy: Share of differing pixels up to which an image is a near copy of a training image.
        kid: Also compute KID (:class:`bespoke_pl.kid.PixelKID`, needs >= 2 images).
        prefix: Prepended to every key of ``compute()``, e.g. ``"quality/raw/"``.
        metric_kwargs: Passed to every metric, e.g. ``sync_on_compute=False`` when one process updates.
    """

    def __init__(
        self,
        train_images: torch.Tensor,
        pixel_scale: int = 1,
        colour_range: tuple[int, int] = (35, 50),
        tolerance: float = TOLERANCE,
        bottom_rows: int = 3,
        torso_margin: int = 2,
        near_copy: float = 0.05,
        kid: bool = False,
        prefix: str = "",
        **metric_kwargs,
    ) -> None:
        if pixel_scale < 1:
            raise ValueError(f"pixel_scale must be >= 1, got {pixel_scale}")
        tol = tolerance
        metrics: dict[str, Metric] = {
            "colours": ColourCount(colour_range, **metric_kwargs),
            "palette": PaletteAdherence(palette_of(train_images), tol, **metric_kwargs),
            "head": HeadShape(train_images, tol, bottom_rows, torso_margin, **metric_kwargs),
            "memorisation": Memorisation(train_images, tol, near_copy, **metric_kwargs),
        }
        if pixel_scale > 1:
            metrics["grid"] = GridFidelity(pixel_scale, tol, **metric_kwargs)
        if kid:
            metrics["kid"] = PixelKID(train_images, **metric_kwargs)
        super().__init__(metrics, prefix=prefix, compute_groups=False)
        self.pixel_scale = pixel_scale

    def update(self, images: torch.Tensor, exclude: torch.Tensor | None = None) -> None:
        """Args: images (B, 3, 24k, 24k) uint8; exclude: per image a training index to skip (-1: none)."""
        art = reduce_blocks(images, self.pixel_scale)
        for metric in self.values(copy_state=False):
            given = images if getattr(metric, "on_raw", False) else art
            metric.update(given, **metric._filter_kwargs(art=art, exclude=exclude))
