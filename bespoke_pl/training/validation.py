"""A deterministic validation loss: the same images, timesteps and noise at every epoch and in every run.

The training loss of one step is a noisy estimate (a random timestep and noise per image), and its epoch mean
still moves with the draws. Validation removes both sources: each held-out image is noised at ``K`` fixed
timesteps spread over the schedule (the middle of K equal bins, ``t_j = (j + 1/2) T / K``), with noise drawn
from a generator seeded by the image's position alone. Two epochs, or two runs with the same data, measure the
same problems, so a lower ``val/loss`` means a better model and nothing else.

The same measure on a fixed subset of the training images (``val/train_loss``) shows overfitting: on a set of
~200 images the training images' loss keeps falling while the held-out loss turns up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bespoke_pl.training.cache import LatentCache, TextCache
from bespoke_pl.training.speed import cache_latents

# Logged names; ``val/loss`` is the one to monitor (checkpoint.monitor, EarlyStopping).
VAL_LOSS, TRAIN_SUBSET_LOSS, GAP = "val/loss", "val/train_loss", "val/gap"
SPLITS = (VAL_LOSS, TRAIN_SUBSET_LOSS)


def fixed_timesteps(count: int, num_timesteps: int) -> torch.Tensor:
    """``count`` integer timesteps at the middles of equal bins of [0, T): (count,) int64.

    4 of 1000: 125, 375, 625, 875: every part of the schedule (fine detail to overall layout) is measured.
    """
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"validation timesteps must be between 1 and {num_timesteps}, got {count}")
    return ((torch.arange(count, dtype=torch.float64) + 0.5) * num_timesteps / count).long()


def fixed_noise(shape: tuple[int, ...], seed: int, item: int, count: int) -> torch.Tensor:
    """The noise of one validation item at each of its ``count`` timesteps: (count, *shape) float32.

    Drawn on the CPU from a generator seeded by ``(seed, item)`` only, so it does not depend on the batch the
    item falls in, the device, or the global RNG (which the training noise uses and resume restores).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + item)
    return torch.randn((count, *shape), generator=generator)


@dataclass
class LossSums:
    """Per-split sums of per-image losses, in Python floats (double precision on every device)."""

    totals: dict[str, float]
    counts: dict[str, int]

    @classmethod
    def empty(cls) -> LossSums:
        return cls({name: 0.0 for name in SPLITS}, {name: 0 for name in SPLITS})

    def add(self, split: str, total: float, count: int) -> None:
        self.totals[split] += total
        self.counts[split] += count

    def reduced(self, strategy, device) -> LossSums:
        """The sums over all processes (each measured its share of the images)."""
        values = [self.totals[n] for n in SPLITS] + [float(self.counts[n]) for n in SPLITS]
        summed = strategy.reduce(torch.tensor(values, device=device), reduce_op="sum").tolist()
        totals = dict(zip(SPLITS, summed[: len(SPLITS)], strict=True))
        return LossSums(totals, dict(zip(SPLITS, map(round, summed[len(SPLITS) :]), strict=True)))

    def means(self) -> dict[str, float]:
        """The mean loss of each split that had images, and the gap between them when both had."""
        found = {name: self.totals[name] / self.counts[name] for name in SPLITS if self.counts[name]}
        if len(found) == len(SPLITS):
            found[GAP] = found[VAL_LOSS] - found[TRAIN_SUBSET_LOSS]
        return found


def batch_loss_sum(
    loss_fn, latents: torch.Tensor, embeds, items: torch.Tensor, timesteps, seed: int
) -> float:
    """The sum over a batch's images of each image's loss averaged over the fixed timesteps.

    Args:
        loss_fn: ``(latents, embeds, timesteps, noise) -> the batch's mean loss`` (the module's
            ``compute_loss``, so validation measures the training objective, weighting included).
        latents: (B, C, h, w) scaled latents.
        embeds: The batch's prompt embeddings.
        items: (B,) each image's fixed position in its split (seeds its noise).
        timesteps: (K,) from :func:`fixed_timesteps`.
        seed: The validation seed.
    """
    count = len(timesteps)
    noise = torch.stack([fixed_noise(tuple(latents.shape[1:]), seed, int(i), count) for i in items])
    noise = noise.to(latents.device, latents.dtype)  # (B, K, C, h, w)
    total = 0.0  # a Python float (double): MPS has no float64 tensors
    for j in range(count):
        # One batch per timestep: no more memory than a training step's forward pass.
        t = timesteps[j].to(latents.device).expand(latents.shape[0])
        total += float(loss_fn(latents, embeds, t, noise[:, j])) * latents.shape[0]
    return total / count


@dataclass
class ValidationCaches:
    """Latents (and, with frozen text encoders, prompt embeddings) of each validation split, built once.

    Always the VAE posterior mean, whatever ``latent_sampling`` says: a drawn latent would make the measure
    random again. Shares the latent disk cache's keys, so a held-out image is encoded once across runs.
    """

    latents: list[LatentCache]
    embeds: list[TextCache] | None

    @classmethod
    def build(cls, module, sets) -> ValidationCaches:
        """Encode each split of ``sets`` (the data module's ``validation_sets()``) with ``module``."""
        h = module.hparams
        latents = [cache_latents(module, s) for s in sets]
        embeds = (
            None if h.train_text_encoder else [TextCache.build(s.captions, module.encode_text) for s in sets]
        )
        return cls(latents, embeds)

    def lookup(self, module, split: int, index: torch.Tensor, captions: list[str]):
        """(latents, prompt embeddings, loss masks or None) of a validation batch; captions are encoded now
        if not cached."""
        embeds = self.embeds[split][index] if self.embeds is not None else module.encode_text(captions)
        latents = self.latents[split]
        return latents[index], embeds, latents.mask(index)


class ValidationSteps:
    """The LightningModule's validation hooks: the deterministic loss of held-out images (``dataloader_idx``
    0) and of the training subset (1), summed per split and logged as their means."""

    def on_validation_epoch_start(self) -> None:
        self.val_sums = LossSums.empty()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        index = batch["index"]
        if self.validation is not None:
            latents, embeds, mask = self.validation.lookup(
                self, dataloader_idx, index, list(batch["caption"])
            )
        else:  # validation outside fit (no caches built)
            latents = self.encode_images(batch["pixels"], mean=True)
            embeds = self.encode_text(list(batch["caption"]))
            mask = self.loss_mask(batch.get("alpha"), latents.shape[-2:])
        timesteps = fixed_timesteps(self.hparams.validation_timesteps, len(self.alphas_cumprod))
        seed = self.hparams.validation_seed + dataloader_idx  # the subset's noise is not the held-out's

        def loss(latents, embeds, timesteps, noise):
            plain = self.hparams.validation_loss == "mse"
            return self.compute_loss(latents, embeds, timesteps, noise, mask=mask, plain=plain)

        total = batch_loss_sum(loss, latents, embeds, index, timesteps, seed)
        self.val_sums.add(SPLITS[dataloader_idx], total, len(index))

    def on_validation_epoch_end(self) -> None:
        sums = self.val_sums
        if self.trainer.world_size > 1:  # each process measured its share of the images
            sums = sums.reduced(self.trainer.strategy, self.device)
        for name, value in sums.means().items():
            self.log(name, value, on_epoch=True, add_dataloader_idx=False, batch_size=1)
