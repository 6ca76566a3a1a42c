"""Pixel-art quality as torchmetrics ``Metric``s: per-image values, summed over batches and processes.

Every metric has ``values(...)``: one value per image under each key of ``compute()`` (plus a few extra
columns, e.g. the nearest training image). ``update`` sums those values, ``compute`` averages them, and
``evaluate`` builds its per-image rows from the very same values. Metrics of the art take uint8 24x24
images (B, 3, 24, 24); grid fidelity also takes the images as generated (B, 3, 24k, 24k) and judges how
blocky they already are. The training images (N, 3, 24, 24) are the reference: their palette, silhouettes
and the images themselves. Nothing here reduces a decode to the grid: callers pass the art they already
made (:func:`bespoke_pl.pixelart.snap.snap_and_lock`).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection

from bespoke_pl.pixelart.kid import PixelKID
from bespoke_pl.pixelart.metric_sums import PerImageSums, without
from bespoke_pl.pixelart.palette import nearest_in_palette, palette_of
from bespoke_pl.pixelart.quality import (
    TOLERANCE,
    bottom_widths,
    colour_counts,
    copy_distances,
    foreground_masks,
    grid_agreement,
    identical,
    silhouette_ious,
)

COLOUR_RANGE = (35, 50)  # the originals' colour counts: the default target everywhere


class ColourCount(PerImageSums):
    """Distinct colours per image on the art grid, and whether it lies inside a target range.

    Args:
        colour_range: Inclusive (low, high) colour count a good image has (the originals: 35-50).
    """

    keys = ("colours", "colours_in_range")

    def __init__(self, colour_range: tuple[int, int] = COLOUR_RANGE, **kwargs) -> None:
        super().__init__(**kwargs)
        self.low, self.high = colour_range

    def values(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        counts = colour_counts(images)
        return {"colours": counts, "colours_in_range": (counts >= self.low) & (counts <= self.high)}


class PaletteAdherence(PerImageSums):
    """Share of an image's pixels within ``tolerance`` (OKLab) of a palette colour, and their mean distance.

    :class:`PixelArtQuality` gives it the art grid (the snapped images), so it judges the colour the model
    chose for each art pixel, and grid fidelity judges the blur and noise around it. After palette lock it
    is 1.0 and 0.

    Args:
        palette: uint8 (P, 3) reference colours (the training palette).
        tolerance: OKLab distance that still counts as the palette colour.
    """

    keys = ("palette_share", "palette_distance")

    def __init__(self, palette: torch.Tensor, tolerance: float = TOLERANCE, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("palette", palette.clone(), persistent=False)
        self.tolerance = tolerance

    def values(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        _, distance = nearest_in_palette(images, self.palette)  # (B, H, W)
        return {
            "palette_share": (distance <= self.tolerance).flatten(1).float().mean(1),
            "palette_distance": distance.flatten(1).mean(1),
        }


class GridFidelity(PerImageSums):
    """How much of each raw image already agrees with its k x k blocks (1.0: perfectly blocky, no blur).

    Args:
        pixel_scale: The block size k when no art is given (with art, k is the ratio of the sides).
        tolerance: OKLab distance within which a pixel agrees with its block's colour.
    """

    keys = ("grid_fidelity",)
    on_raw = True

    def __init__(self, pixel_scale: int, tolerance: float = TOLERANCE, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pixel_scale, self.tolerance = pixel_scale, tolerance

    def values(self, images: torch.Tensor, art: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Args: images (B, 3, 24k, 24k); art: their reduction to the grid, if already at hand."""
        k = images.shape[-1] // art.shape[-1] if art is not None else self.pixel_scale
        if k == 1:  # a 24x24 image is trivially on its grid: no value, not counted
            return {"grid_fidelity": torch.full((len(images),), float("nan"))}
        return {"grid_fidelity": grid_agreement(images, k, self.tolerance, art)}


class HeadShape(PerImageSums):
    """Heads only: silhouettes against the training silhouettes, and a torso signal at the bottom.

    ``silhouette_iou`` is each image's IoU with the nearest training silhouette, ``silhouette_iou_mean``
    with the majority silhouette (pixels that are foreground in at least half the training images).
    ``torso_ratio`` is the foreground width along the bottom rows over the widest such width in the
    training set (a neck: <= 1); ``torso_share`` the share of images wider than that by > ``torso_margin``.
    ``values`` also gives each image's ``bottom_width``.

    Args:
        train_images: uint8 (N, 3, H, W) training art.
        tolerance: OKLab distance from the background within which a pixel is background.
        bottom_rows: How many bottom rows the torso signal looks at.
        torso_margin: Pixels wider than the widest training bottom that count as a torso.
    """

    keys = ("silhouette_iou", "silhouette_iou_mean", "torso_ratio", "torso_share")
    leave_one_out = True

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

    def values(self, images: torch.Tensor, exclude: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Args: images; exclude: per image, a training index to ignore (-1: none), for leave-one-out."""
        masks = foreground_masks(images, self.tolerance)
        ious = without(silhouette_ious(masks, self.train_masks), exclude, -1.0)
        widths = bottom_widths(masks, self.bottom_rows)
        return {
            "silhouette_iou": ious.amax(1),
            "silhouette_iou_mean": silhouette_ious(masks, self.majority)[:, 0],
            "torso_ratio": widths.double() / self.widest_bottom,
            "torso_share": widths > self.widest_bottom + self.torso_margin,
            "bottom_width": widths,
        }

    def reference(self) -> dict[str, float]:
        """What the training silhouettes themselves look like."""
        return {
            "widest_bottom_width": self.widest_bottom,
            "majority_silhouette_pixels": int(self.majority.sum()),
            "silhouette_pixels_mean": float(self.train_masks.flatten(1).sum(1).float().mean()),
        }


class Memorisation(PerImageSums):
    """Distance to the nearest training image (share of pixels that differ) and copies flagged.

    ``values`` also gives the index of each image's nearest training image (``nearest``).

    Args:
        train_images: uint8 (N, 3, H, W) training art.
        tolerance: OKLab distance within which two pixels are the same.
        near_copy: An image differing from a training image in at most this share of pixels is a near copy.
    """

    keys = ("copy_distance", "exact_copies", "near_copies")
    leave_one_out = True

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

    def values(self, images: torch.Tensor, exclude: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Args: images; exclude: per image, a training index to ignore (-1: none), for leave-one-out."""
        distance = without(copy_distances(images, self.train_images, self.tolerance), exclude, float("inf"))
        same = without(identical(images, self.train_images), exclude, False)
        nearest, index = distance.min(1)
        return {
            "copy_distance": nearest,
            "exact_copies": same.any(1),
            "near_copies": nearest <= self.near_copy,
            "nearest": index,
        }


class PixelArtQuality(MetricCollection):
    """All pixel-art metrics of a set of generated images, as one collection.

    ``update(art, raw=None, exclude=None)`` takes the art (B, 3, 24, 24) and, for grid fidelity, the images
    as generated (B, 3, 24k, 24k) that it was made from; :meth:`measure` does the same and also returns the
    per-image values. ``compute()`` is one flat dict (keys prefixed with ``prefix``). Grid fidelity is
    included for ``pixel_scale`` > 1 only (a 24x24 image is trivially on its grid).

    Args:
        train_images: uint8 (N, 3, 24, 24) training art: the palette, silhouettes and copies to compare with.
        pixel_scale: Block size k of the raw images passed to ``update`` (1: no raw images).
        colour_range: Inclusive colour count range of a good image.
        tolerance: OKLab distance within which two colours are the same.
        bottom_rows: Rows the torso signal looks at.
        torso_margin: Pixels wider than the widest training bottom that count as a torso.
        near_copy: Share of differing pixels up to which an image is a near copy of a training image.
        kid: Also compute KID (:class:`bespoke_pl.pixelart.kid.PixelKID`, needs >= 2 images).
        prefix: Prepended to every key of ``compute()``, e.g. ``"quality/raw/"``.
        palette: The training palette, where the caller already has it (default: computed here).
        metric_kwargs: Passed to every metric, e.g. ``sync_on_compute=False`` when one process updates.
    """

    def __init__(
        self,
        train_images: torch.Tensor,
        pixel_scale: int = 1,
        colour_range: tuple[int, int] = COLOUR_RANGE,
        tolerance: float = TOLERANCE,
        bottom_rows: int = 3,
        torso_margin: int = 2,
        near_copy: float = 0.05,
        kid: bool = False,
        prefix: str = "",
        palette: torch.Tensor | None = None,
        **metric_kwargs,
    ) -> None:
        if pixel_scale < 1:
            raise ValueError(f"pixel_scale must be >= 1, got {pixel_scale}")
        tol = tolerance
        palette = palette_of(train_images) if palette is None else palette
        metrics: dict[str, Metric] = {
            "colours": ColourCount(colour_range, **metric_kwargs),
            "palette": PaletteAdherence(palette, tol, **metric_kwargs),
            "head": HeadShape(train_images, tol, bottom_rows, torso_margin, **metric_kwargs),
            "memorisation": Memorisation(train_images, tol, near_copy, **metric_kwargs),
        }
        if pixel_scale > 1:
            metrics["grid"] = GridFidelity(pixel_scale, tol, **metric_kwargs)
        if kid:
            metrics["kid"] = PixelKID(train_images, **metric_kwargs)
        super().__init__(metrics, prefix=prefix, compute_groups=False)
        self.pixel_scale = pixel_scale

    def measure(
        self, art: torch.Tensor, raw: torch.Tensor | None = None, exclude: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Update every metric with a batch and return its per-image values (one tensor (B,) per key).

        Args:
            art: uint8 (B, 3, 24, 24), the images on the art grid.
            raw: uint8 (B, 3, 24k, 24k), what ``art`` was made from; needed for grid fidelity.
            exclude: Per image, a training index to leave out (-1: none): an image's own training original.
        """
        columns: dict[str, torch.Tensor] = {}
        for name, metric in self.items(keep_base=True, copy_state=False):
            if isinstance(metric, PixelKID):
                metric.update(art)
                continue
            if metric.on_raw:
                if raw is None:
                    raise ValueError(f"{name}: grid fidelity needs the raw images (update(art, raw=...))")
                values = metric.values(raw, art=art)
            elif metric.leave_one_out:
                values = metric.values(art, exclude=exclude)
            else:
                values = metric.values(art)
            metric.update(values=values)
            columns |= values
        return columns

    def update(
        self, art: torch.Tensor, raw: torch.Tensor | None = None, exclude: torch.Tensor | None = None
    ) -> None:
        self.measure(art, raw, exclude)
