"""The endless stream of punks the tiny bases learn from: base-style punks drawn fresh for every batch
(:mod:`bespoke_pl.data.demo`), punks of any skin colour, random flat-colour pixel art, and the demo sets'
images to measure against.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from bespoke_pl.data.demo import SIZE, caption, demo_traits, draw_punk, sample_traits

PIXEL_SCALE = 8  # the bases draw 24x24 art at 192 px: one art pixel per latent cell


def punk_batch(rng: random.Random, size: int, style: str = "base") -> tuple[torch.Tensor, list[str]]:
    """``size`` fresh punks: uint8 (B, 3, 24, 24) and their captions."""
    traits = [sample_traits(rng) for _ in range(size)]
    return torch.stack([punk_tensor(t, style) for t in traits]), [caption(t) for t in traits]


def punk_tensor(traits, style: str = "base", skin: tuple[int, int, int] | None = None) -> torch.Tensor:
    """One drawn punk as uint8 (3, 24, 24); ``skin``: one colour for the skin instead of ``style``'s."""
    return torch.from_numpy(np.array(draw_punk(traits, style, skin))).permute(2, 0, 1)


def random_art(rng: random.Random, size: int) -> torch.Tensor:
    """Flat-colour pixel art of random colours: uint8 (B, 3, 24, 24), rectangles on a background plus
    a sprinkle of single pixels, so the VAE learns to code any colour, not only the base palette."""
    art = torch.empty(size, 3, SIZE, SIZE, dtype=torch.uint8)
    for image in art:
        image[:] = torch.tensor([rng.randrange(256) for _ in range(3)], dtype=torch.uint8)[:, None, None]
        for _ in range(rng.randrange(3, 12)):
            x0, y0 = rng.randrange(SIZE), rng.randrange(SIZE)
            x1, y1 = x0 + rng.randrange(1, 9), y0 + rng.randrange(1, 9)
            image[:, y0:y1, x0:x1] = torch.tensor([rng.randrange(256) for _ in range(3)])[:, None, None]
        for _ in range(rng.randrange(0, 20)):
            image[:, rng.randrange(SIZE), rng.randrange(SIZE)] = torch.tensor(
                [rng.randrange(256) for _ in range(3)]
            )
    return art


def recoloured_punks(rng: random.Random, size: int) -> torch.Tensor:
    """``size`` fresh punks, each with one random skin colour: uint8 (B, 3, 24, 24).

    The punks' shading (brows, nose, chin at 0.5-0.82 of the skin) sits a few levels from the skin; in
    the base tones only, the decoder missed it in saturated tones (a LoRA's neon demo set: 97.45% of
    pixels exact). Any colour, not the neon one: the UNet still never sees a non-base skin.
    """
    traits = [sample_traits(rng) for _ in range(size)]
    skins = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(size)]
    return torch.stack([punk_tensor(t, skin=s) for t, s in zip(traits, skins, strict=True)])


def punk_image(index: int, style: str, seed: int = 0) -> torch.Tensor:
    """Demo punk ``index`` of the set ``write_demo_dataset(seed=seed, style=style)`` writes: uint8 (3, 24, 24)."""
    return punk_tensor(demo_traits(index, seed), style)
