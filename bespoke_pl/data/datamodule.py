"""Strict 24x24 image + caption pairs, read once into memory, and the LightningDataModule around them.

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

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bespoke_pl.data.checks import scan_folder
from bespoke_pl.data.order import EpochOrder
from bespoke_pl.diffusion.base import caption_tokenizer
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


def training_pairs(trainer) -> PixelPairs | None:
    """The in-memory training set of a trainer's data module, or None (another data module, or not loaded)."""
    return getattr(trainer.datamodule, "pairs", None)


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


class PixelArtDataModule(L.LightningDataModule):
    """A folder of strict NxN PNGs with same-stem caption files.

    Args:
        root: Folder of ``*.png`` images and their captions. ``demo:punks`` is the bundled demo set,
            generated on first use.
        resolution: The only accepted image size (square); any other size is refused, never resampled.
        caption_extension: Extension of the caption file next to each image.
        background: Colour (``#rrggbb`` or ``r,g,b``) composited under transparent pixels; images with
            transparency are refused while this and ``alpha_mask`` are unset.
        alpha_mask: Accept transparency and weight the loss by the alpha (per latent cell); composited on
            ``background``, or black where it is unset.
        default_caption: Caption used for images whose caption file is missing or empty; unset refuses them.
        num_repeats: How many times each image appears per epoch (kohya's ``num_repeats``).
        batch_size: Images per optimizer step and device.
        caption_dropout: Probability of training an image with an empty caption.
        shuffle_captions: Shuffle the comma-separated tags of each caption every time it is drawn.
        keep_tokens: With ``shuffle_captions``, how many leading tags stay in place.
        num_workers: DataLoader workers; the set is in memory, so 0 is usually fastest.
        tokenizer_from: A base model (spec, folder or hub id) whose CLIP tokenizer measures the captions'
            lengths, when it is on disk; unset: a CLIP-like estimate. ``fit`` links it to the model's
            ``base_config`` or ``base_model``.
        val_split: Images of ``root`` held out for the validation loss: below 1 a fraction (0.05: 10 of
            200), from 1 a count; chosen evenly over the sorted file names, the same for every seed.
            0 with no ``val_root``: no validation.
        val_root: A separate folder of held-out pairs (checked like ``root``), instead of ``val_split``.
    """

    def __init__(
        self,
        root: str,
        resolution: int = 24,
        caption_extension: str = ".txt",
        background: str | None = None,
        alpha_mask: bool = False,
        default_caption: str | None = None,
        num_repeats: int = 1,
        batch_size: int = 4,
        caption_dropout: float = 0.0,
        shuffle_captions: bool = False,
        keep_tokens: int = 0,
        num_workers: int = 0,
        tokenizer_from: str | None = None,
        val_split: float = 0.0,
        val_root: str | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        if num_repeats < 1 or batch_size < 1:
            raise ValueError("num_repeats and batch_size must be >= 1")
        self.save_hyperparameters()
        if val_split < 0:
            raise ValueError(f"data.val_split must be >= 0, got {val_split}")
        if val_split and val_root:
            raise ValueError("give data.val_split or data.val_root, not both")
        self.pairs: PixelPairs | None = None
        self.val_pairs: PixelPairs | None = None
        self._train_subset: PixelPairs | None = None
        self.train_set: PixelPairDataset | None = None
        self.epoch_order: EpochOrder | None = None

    @property
    def root_path(self) -> Path:
        return self._folder(self.hparams.root)

    @staticmethod
    def _folder(root: str) -> Path:
        if root.startswith("demo:"):
            from bespoke_pl.data.demo import resolve_demo

            root = resolve_demo(root)
        return Path(root).expanduser()

    def load(self, tokenizer=None) -> PixelPairs:
        """Read and check the folder once; later calls return the same in-memory set.

        Args:
            tokenizer: A CLIP tokenizer to measure captions with; unset: ``tokenizer_from``'s, else an estimate.
        """
        if self.pairs is None:
            h = self.hparams
            if tokenizer is None and h.tokenizer_from:
                tokenizer = caption_tokenizer(h.tokenizer_from)
            rules = (
                h.resolution,
                h.caption_extension,
                h.background,
                h.default_caption,
                tokenizer,
                h.alpha_mask,
            )
            pairs = load_pairs(self.root_path, *rules)
            log.info("loaded %d image-caption pairs from %s", len(pairs.captions), self.root_path)
            if h.val_root:
                self.val_pairs = load_pairs(self._folder(h.val_root), *rules)
            elif h.val_split:
                pairs, self.val_pairs = split_off(pairs, h.val_split, self.root_path)
            if self.val_pairs is not None:
                log.info("validation: %d held-out images", len(self.val_pairs.captions))
            self.pairs = pairs
        return self.pairs

    def validation_sets(self) -> list[PixelPairs]:
        """[held-out pairs, as many training pairs spread over the set] when validating, else [].

        The second set is measured the same way, so the gap between the two losses shows overfitting.
        """
        train = self.load()  # splits off val_pairs
        if self.val_pairs is None:
            return []
        if self._train_subset is None:  # asked for by setup, the loaders and the module: chosen once
            self._train_subset = train.subset(spread(len(train.captions), len(self.val_pairs.captions)))
        return [self.val_pairs, self._train_subset]

    def prepare_data(self) -> None:
        # Builds the demo set once (rank zero) when ``root`` names it; a no-op for a real folder.
        _ = self.root_path

    def setup(self, stage: str) -> None:
        h = self.hparams
        self.train_set = PixelPairDataset(
            self.load(), h.num_repeats, h.caption_dropout, h.shuffle_captions, h.keep_tokens
        )
        if self.trainer is not None and not self.validation_sets():
            # No validation set: Lightning would still ask for the loaders and warn that they are empty.
            self.trainer.limit_val_batches = 0
        if self.trainer is None or self.trainer.world_size == 1:
            # A seeded, resumable order (see resume.py); with several devices Lightning's sampler is used.
            self.epoch_order = EpochOrder(len(self.train_set), h.batch_size, torch.initial_seed())

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        if self.epoch_order is not None:
            # Its own generator: a loader draws a worker base seed per epoch, which must not shift the
            # global RNG that noise and timesteps come from.
            return DataLoader(
                self.train_set,
                batch_size=self.hparams.batch_size,
                sampler=self.epoch_order,
                num_workers=self.hparams.num_workers,
                persistent_workers=self.hparams.num_workers > 0,
                generator=torch.Generator().manual_seed(self.epoch_order.seed),
            )
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def val_dataloader(self) -> list[DataLoader]:
        """The held-out images, then the training subset (``dataloader_idx`` 0 and 1); in a fixed order.

        Captions stay as written (no dropout or shuffling): validation measures the same problem each time.
        """
        # Each loader its own generator: creating an iterator draws a seed, which must not come from the
        # global RNG that the training noise uses (a run with validation trains exactly as one without).
        return [
            DataLoader(
                PixelPairDataset(pairs), self.hparams.batch_size, generator=torch.Generator().manual_seed(0)
            )
            for pairs in self.validation_sets()
        ]
