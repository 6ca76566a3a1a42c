"""The LightningDataModule around a folder of strict pixel-art pairs (:mod:`bespoke_pl.data.pairs`): loading
once, the held-out split, the epoch order, and what the trainer asks of the data."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from bespoke_pl.data.options import check_data_options
from bespoke_pl.data.order import EpochOrder
from bespoke_pl.data.pairs import PixelPairDataset, PixelPairs, load_pairs, split_off, spread
from bespoke_pl.diffusion.base import caption_tokenizer

log = logging.getLogger(__name__)


def pixel_data(trainer: L.Trainer) -> PixelArtDataModule | None:
    """The trainer's data module when it is this project's (its pairs in memory), else None: data given
    as loaders, or a data module of the user's own, which the caches, samples and resume do without."""
    datamodule = trainer.datamodule
    return datamodule if isinstance(datamodule, PixelArtDataModule) else None


def training_pairs(trainer: L.Trainer) -> PixelPairs | None:
    """The in-memory training set of a trainer's data module, or None (another data module, or none)."""
    data = pixel_data(trainer)
    return data.training_pairs() if data is not None else None


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
        self.save_hyperparameters()
        check_data_options(self.hparams)
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
            from bespoke_pl.data.demo_sets import resolve_demo

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

    def training_pairs(self) -> PixelPairs:
        """The pairs trained on (read on first use; without the held-out images)."""
        return self.load()

    @property
    def captions_are_fixed(self) -> bool:
        """True when an image always gets the same caption (no dropout, no shuffling): its text embedding
        can be cached."""
        return self.hparams.caption_dropout == 0 and not self.hparams.shuffle_captions

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
