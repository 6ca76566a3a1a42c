"""Per-image pixel-art measurements, plain torch: colours, grid agreement, silhouettes, copies.

The torchmetrics wrappers in :mod:`bespoke_pl.pixelart.metrics` accumulate these over batches; ``evaluate`` also
prints them image by image. Images are uint8 (B, 3, H, W) on the art grid (24x24) unless a function says
otherwise. Two colours are "the same" when their OKLab distance is at most ``tolerance`` (0.03 by default:
a little above what the eye can tell apart, enough to absorb VAE noise).
"""

from __future__ import annotations

import torch

from bespoke_pl.pixelart.grid import upscale_nearest
from bespoke_pl.pixelart.palette import distances, image_oklab, packed_colours
from bespoke_pl.pixelart.snap import reduce_to_grid

TOLERANCE = 0.03


def colour_counts(images: torch.Tensor) -> torch.Tensor:
    """Distinct exact colours of each image: uint8 (B, 3, H, W) -> long (B,)."""
    ordered = packed_colours(images).flatten(1).sort(1).values
    return (ordered[:, 1:] != ordered[:, :-1]).sum(1) + 1


def grid_agreement(
    raw: torch.Tensor, k: int, tolerance: float = TOLERANCE, art: torch.Tensor | None = None
) -> torch.Tensor:
    """Share of each raw image's pixels within ``tolerance`` of their k x k block's colour: (B,) in [0, 1].

    1.0 for a perfectly blocky image (nearest-upscaled art); blur, noise and a grid that is shifted against
    the k x k blocks all lower it.

    Args:
        raw: uint8 (B, 3, 24k, 24k).
        k: Block size (``pixel_scale``); with 1 every image agrees with itself (1.0).
        tolerance: OKLab distance within which a pixel agrees with its block.
        art: ``reduce_to_grid(raw, k)`` (the snap's reduction) if the caller has it already.
    """
    blocks = upscale_nearest(reduce_to_grid(raw, k) if art is None else art, k)
    distance = (image_oklab(raw) - image_oklab(blocks)).norm(dim=-1)  # (B, H, W)
    return (distance <= tolerance).float().mean((1, 2))


def background_colours(images: torch.Tensor, tolerance: float = TOLERANCE) -> torch.Tensor:
    """Each image's background in OKLab (B, 3): the border colour that most border pixels are close to.

    Portraits sit on a flat background that fills the border; the neck touching the bottom edge and hair
    touching the sides stay a minority of the 4 x 23 border pixels.
    """
    lab = image_oklab(images)  # (B, H, W, 3)
    border = torch.cat([lab[:, 0], lab[:, -1], lab[:, 1:-1, 0], lab[:, 1:-1, -1]], dim=1)  # (B, n, 3)
    support = (distances(border, border) <= tolerance).sum(-1)  # (B, n)
    return border[torch.arange(len(border)), support.argmax(1)]


def foreground_masks(images: torch.Tensor, tolerance: float = TOLERANCE) -> torch.Tensor:
    """Silhouettes: True where a pixel differs from the image's background by more than ``tolerance``.

    Args:
        images: uint8 (B, 3, H, W) on the art grid.

    Returns:
        bool (B, H, W).
    """
    background = background_colours(images, tolerance)
    return (image_oklab(images) - background[:, None, None]).norm(dim=-1) > tolerance


def bottom_widths(masks: torch.Tensor, rows: int = 3) -> torch.Tensor:
    """Foreground pixels in the widest of the bottom ``rows`` rows of each silhouette: (B,) long.

    A head ends in a neck a few pixels wide; shoulders or a torso fill the bottom rows.
    """
    return masks[:, -rows:].sum(-1).amax(-1)


def silhouette_ious(masks: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every silhouette with every reference: (B, H, W), (N, H, W) -> (B, N)."""
    a = masks.flatten(1).float()
    r = references.flatten(1).float()
    inter = a @ r.T
    union = a.sum(1, keepdim=True) + r.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def copy_distances(images: torch.Tensor, train: torch.Tensor, tolerance: float = TOLERANCE) -> torch.Tensor:
    """Share of pixels by which each image differs from each training image: (B, 3, H, W), (N, 3, H, W) -> (B, N).

    0 means the same picture (every pixel within ``tolerance``); 0.05 is 29 of 576 pixels changed.
    """
    train_lab = image_oklab(train).flatten(1, 2)  # (N, HW, 3)
    rows = []
    for lab in image_oklab(images).flatten(1, 2):  # one image at a time: (N, HW) distances
        rows.append(((train_lab - lab).norm(dim=-1) > tolerance).float().mean(1))
    return torch.stack(rows)


def identical(images: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """Which training images each image equals pixel for pixel: (B, 3, H, W), (N, 3, H, W) -> bool (B, N)."""
    return (images.unsqueeze(1) == train.unsqueeze(0)).flatten(2).all(-1)


def pixel_features(images: torch.Tensor, size: int = 8) -> torch.Tensor:
    """A fixed, download-free image descriptor for KID: OKLab averaged over a size x size grid, (B, 3*size^2).

    Not Inception: it sees layout and colour, not identity. Good enough to tell a set of heads on flat
    backgrounds from noise or from torsos, and it needs no weights.
    """
    lab = image_oklab(images).permute(0, 3, 1, 2)  # (B, 3, H, W)
    return torch.nn.functional.adaptive_avg_pool2d(lab, size).flatten(1)
