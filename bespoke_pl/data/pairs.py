"""Strict 24x24 image + caption pairs, read once into memory, and the Dataset that serves them.

Nothing is resampled, bucketed, flipped or cropped: an image of any other size is refused, colours stay
exact uint8 (the model maps them to [-1, 1] losslessly). Kohya's dataset options that make sense for a
fixed set of tiny images are here: ``num_repeats``, caption dropout and caption shuffling with
``keep_tokens``.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bespoke_pl.data.checks import scan_folder
from bespoke_pl.errors import DatasetError
from bespoke_pl.pixelart.palette import palette_of

log = logging.getLogger(__name__)


@dataclass
class PixelPairs:
    """The whole data set in memory: images (N, 3, H, W) uint8 and one caption per image; with
    ``alpha_mask``, each image's alpha (N, 1, H, W) uint8 (255: opaque), else None."""

    paths: list[Path]
    images: torch.Tensor
    captions: list[str]
    alphas: torch.Tensor | None = None

    @functools.cached_property
    def palette(self) -> torch.Tensor:
        """The training palette (P, 3) uint8, computed once per run: for the palette lock of samples, the
        metrics, the round trip and the LoRA file's header."""
        return palette_of(self.images)

    def subset(self, indices: list[int]) -> PixelPairs:
        """The pairs at ``indices``, in that order."""
        alphas = self.alphas[indices] if self.alphas is not None else None
        return PixelPairs(
            [self.paths[i] for i in indices],
            self.images[indices],
            [self.captions[i] for i in indices],
            alphas,
        )


def spread(total: int, count: int) -> list[int]:
    """``count`` indices evenly spread over ``range(total)``: a fixed, seed-free choice of images."""
    count = min(count, total)
    return [int((i + 0.5) * total / count) for i in range(count)]


def split_off(pairs: PixelPairs, val_split: float, source: Path) -> tuple[PixelPairs, PixelPairs]:
    """(training pairs, held-out pairs): ``val_split`` images evenly spread over the sorted file names.

    Spread, not random: the choice depends on the folder alone (not on the seed), so runs with other seeds
    are validated on the same images, and it samples the whole set rather than one end of it.

    Args:
        val_split: Below 1, a fraction of the images (rounded up); from 1, a count.
        source: The folder, for the error message.
    """
    total = len(pairs.captions)
    count = math.ceil(val_split * total) if val_split < 1 else int(val_split)
    if val_split >= 1 and val_split != int(val_split):
        raise ValueError(f"data.val_split {val_split} is neither a fraction below 1 nor a whole count")
    if count >= total:
        raise DatasetError(
            f"data.val_split {val_split} holds out {count} of the {total} images in {source}, "
            "leaving none to train on"
        )
    held = spread(total, count)
    kept = [i for i in range(total) if i not in set(held)]
    return pairs.subset(kept), pairs.subset(held)


def parse_colour(value: str) -> tuple[int, int, int]:
    """Parse ``#rrggbb``, ``rrggbb`` or ``r,g,b`` into an RGB triple."""
    text = value.strip()
    try:
        if "," in text:
            rgb = tuple(int(part) for part in text.split(","))
        else:
            text = text.removeprefix("#")
            if len(text) != 6:
                raise ValueError
            rgb = tuple(int(text[i : i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"background colour {value!r} is not '#rrggbb' or 'r,g,b' with values 0-255")
    return rgb  # type: ignore[return-value]


def load_pairs(
    root: str | Path,
    resolution: int = 24,
    caption_extension: str = ".txt",
    background: str | None = None,
    default_caption: str | None = None,
    tokenizer=None,
    alpha_mask: bool = False,
) -> PixelPairs:
    """Read every ``*.png`` in ``root`` with its same-stem caption, refusing anything not strictly usable.

    The rules are :func:`bespoke_pl.data.checks.scan_folder`'s; all problems are collected first, so one error
    lists every offending file. Warnings (e.g. captions longer than 77 tokens) are logged.

    Args:
        tokenizer: The base model's CLIP tokenizer to measure captions with; unset: an estimate.
        alpha_mask: Keep each image's alpha for the loss mask; transparency needs no ``background`` then.
    """
    bg = parse_colour(background) if background else None
    scan = scan_folder(root, resolution, caption_extension, bg, default_caption, tokenizer, alpha_mask)
    if scan.report.errors:
        raise DatasetError(scan.report.format())
    for finding in scan.report.warnings:
        log.warning("%s: %s", finding.problem, finding.item)
    stacked = torch.from_numpy(np.stack(scan.images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)
    alphas = torch.from_numpy(np.stack(scan.alphas))[:, None] if alpha_mask else None  # (N, 1, H, W)
    return PixelPairs(paths=scan.paths, images=stacked, captions=scan.captions, alphas=alphas)


def shuffle_caption(caption: str, keep_tokens: int, generator: torch.Generator) -> str:
    """Shuffle a caption's comma-separated tags, keeping the first ``keep_tokens`` tags in place."""
    tags = [tag.strip() for tag in caption.split(",")]
    fixed, rest = tags[:keep_tokens], tags[keep_tokens:]
    order = torch.randperm(len(rest), generator=generator).tolist()
    return ", ".join(fixed + [rest[i] for i in order])


class PixelPairDataset(Dataset):
    """Index -> {"pixels": uint8 (3, H, W), "caption": str, "index": int}, with the caption options; with
    the pairs' alphas also "alpha": uint8 (1, H, W)."""

    def __init__(
        self,
        pairs: PixelPairs,
        num_repeats: int = 1,
        caption_dropout: float = 0.0,
        shuffle_captions: bool = False,
        keep_tokens: int = 0,
    ) -> None:
        self.pairs = pairs
        self.num_repeats = num_repeats
        self.caption_dropout = caption_dropout
        self.shuffle_captions = shuffle_captions
        self.keep_tokens = keep_tokens

    @property
    def caption_is_fixed(self) -> bool:
        """True when an image always gets the same caption text (so its text embedding can be cached)."""
        return self.caption_dropout == 0 and not self.shuffle_captions

    def __len__(self) -> int:
        return len(self.pairs.captions) * self.num_repeats

    def __getitem__(self, i: int | tuple[int, int]) -> dict:
        # resume.EpochOrder passes (i, draw seed) so caption draws do not depend on when items are fetched.
        i, draw = i if isinstance(i, tuple) else (i, None)
        index = i % len(self.pairs.captions)
        caption = self.pairs.captions[index]
        if not self.caption_is_fixed:
            # Else seeded from torch's global RNG, which Lightning's seed_everything (and worker seeding) fixes.
            seed = draw if draw is not None else int(torch.randint(0, 2**62, ()).item())
            generator = torch.Generator().manual_seed(seed)
            if self.shuffle_captions:
                caption = shuffle_caption(caption, self.keep_tokens, generator)
            if self.caption_dropout and torch.rand((), generator=generator).item() < self.caption_dropout:
                caption = ""
        item = {"pixels": self.pairs.images[index], "caption": caption, "index": index}
        if self.pairs.alphas is not None:
            item["alpha"] = self.pairs.alphas[index]
        return item
