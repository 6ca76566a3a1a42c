"""The pixel grid: exact uint8 <-> float mapping, nearest upscaling onto the latent grid, block reduction.

A 24x24 image is a 3x3 latent in SD's 8x VAE: 36 latent cells x 4 channels for 1,728 pixel values, too
few to be pixel-perfect. Training on a nearest-upscaled grid (``pixel_scale`` k) gives each art pixel
k x k image pixels; with k = 8 each art pixel fills exactly one latent cell (24 -> 192 px -> 24x24 latent).
Everything here is plain torch on (B, C, H, W) tensors.
"""

from __future__ import annotations

import torch


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels to floats in [-1, 1], the VAE's input range.

    The map ``x / 127.5 - 1`` is exactly invertible by :func:`to_uint8` (each of the 256 levels lands on a
    distinct float32 and rounds back to itself), so colours survive the trip unchanged.

    Args:
        pixels: uint8 tensor (..., C, H, W).
    """
    if pixels.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    return pixels.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map floats in [-1, 1] back to uint8, rounding to the nearest level and clamping overshoot."""
    return ((images.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def upscale_nearest(images: torch.Tensor, k: int) -> torch.Tensor:
    """Repeat every pixel k x k times (nearest neighbour, no interpolation): (B, C, H, W) -> (B, C, kH, kW)."""
    if k < 1:
        raise ValueError(f"pixel_scale must be >= 1, got {k}")
    if k == 1:
        return images
    return images.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def reduce_blocks(images: torch.Tensor, k: int, tolerance: int = 10) -> torch.Tensor:
    """Reduce each k x k block of a uint8 image to the colour most of it agrees on: (B, C, kH, kW) -> (B, C, H, W).

    A tolerant mode. Each pixel of the block's centre (the middle half of its rows and columns, away from
    edges a blur smears) is a candidate; its support is the number of block pixels within ``tolerance``
    levels of it in every channel. The block becomes the mean of the best-supported candidate's supporters,
    rounded. On clean art (every block one colour) this is that colour exactly and no new colour is
    invented; on a decoded, noisy image it averages the noise away instead of picking one noisy pixel,
    and a few stray or blurred pixels cannot outvote the block. Ties go to the first candidate in raster
    order. ``tolerance=0`` is the exact mode of the centre's colours.

    Args:
        images: uint8 tensor (B, C, kH, kW).
        k: The block size (``pixel_scale``).
        tolerance: Largest per-channel difference (0-255 levels) at which two pixels count as one colour.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    b, c, h, w = images.shape
    if h % k or w % k:
        raise ValueError(f"image size {h}x{w} is not a multiple of pixel_scale {k}")
    if k == 1:
        return images
    # Candidates from the centre, thinned to at most 4 x 4 for large blocks; support counts the whole block.
    margin = k // 4
    centre = torch.arange(margin, k - margin, max(1, (k - 2 * margin) // 4), device=images.device)
    candidates = (centre.view(-1, 1) * k + centre.view(1, -1)).reshape(-1)  # flat indices in a block
    inner = torch.zeros(k, k, device=images.device)
    inner[margin : k - margin, margin : k - margin] = 1  # the colour is averaged here, away from blur
    inner = inner.reshape(-1)
    hb, wb, m = h // k, w // k, len(candidates)
    step = max(1, (1 << 25) // (c * hb * wb * m * k * k))  # images per chunk: ~32M comparisons at once
    out = []
    for start in range(0, b, step):
        chunk = images[start : start + step]
        n = len(chunk)
        blocks = (
            chunk.reshape(n, c, hb, k, wb, k).permute(0, 2, 4, 1, 3, 5).reshape(n, hb, wb, c, k * k).float()
        )
        chosen = blocks[..., candidates]  # (n, H, W, C, m)
        near = ((chosen.unsqueeze(-1) - blocks.unsqueeze(-2)).abs_() <= tolerance).all(3)  # (n, H, W, m, k*k)
        winner = near.sum(-1).argmax(-1)  # (n, H, W): first candidate with the most support
        members = near.gather(3, winner[..., None, None].expand(n, hb, wb, 1, k * k)).squeeze(3)
        members = members.float() * inner  # (n, H, W, k*k); >= 1 member: a candidate supports itself
        mean = (blocks * members.unsqueeze(3)).sum(-1) / members.sum(-1, keepdim=True)  # (n, H, W, C)
        out.append((mean + 0.5).floor().permute(0, 3, 1, 2))
    return torch.cat(out).to(torch.uint8)


def image_grid(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> torch.Tensor:
    """Tile uint8 images (N, C, H, W) into one (C, H', W') grid with ``padding`` black pixels between."""
    n, c, h, w = images.shape
    columns = columns or min(n, 8)
    rows = -(-n // columns)
    grid = torch.zeros(
        c, rows * (h + padding) + padding, columns * (w + padding) + padding, dtype=images.dtype
    )
    for i, image in enumerate(images):
        top, left = padding + (i // columns) * (h + padding), padding + (i % columns) * (w + padding)
        grid[:, top : top + h, left : left + w] = image
    return grid
