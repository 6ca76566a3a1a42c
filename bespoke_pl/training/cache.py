"""Caches of what does not change between epochs: each image's latent and each caption's embedding.

Nothing is augmented (no flips, crops or bucketing), so an image's latent is the same at every step and
is computed once. The caption embedding is the same at every step when the text encoders are frozen and
the caption text is fixed (no shuffling, no dropout). Each cache says why it is off when it is.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bespoke_pl.diffusion.conditioning import PromptEmbeds

log = logging.getLogger(__name__)


def latent_cache_refusal(latent_sampling: str) -> str | None:
    """Why latents cannot be cached under these options, or None when they can."""
    if latent_sampling == "sample":
        return "latent_sampling='sample' draws a fresh latent from the VAE posterior at every step"
    return None


def text_cache_refusal(
    train_text_encoder: bool, caption_dropout: float, shuffle_captions: bool
) -> str | None:
    """Why caption embeddings cannot be cached under these options, or None when they can."""
    if train_text_encoder:
        return "train_text_encoder=True: the text encoders change at every step"
    if shuffle_captions:
        return "shuffle_captions=True: the caption text changes at every step"
    if caption_dropout > 0:
        return f"caption_dropout={caption_dropout}: captions are sometimes replaced by the empty caption"
    return None


def module_fingerprint(module: nn.Module) -> str:
    """A hash of a module's weights and config, so a disk cache never serves latents of another VAE."""
    digest = hashlib.sha256(repr(getattr(module, "config", type(module).__name__)).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class LatentCache:
    """Latents (N, 4, 3k, 3k) of the whole training set, indexed by the data set's image index.

    Args:
        latents: The latents, on the device they will be read on.
        masks: Loss weights (N, 1, 3k, 3k) of the latent cells (``data.alpha_mask``), same device and
            index; unset: no mask. Kept in memory only: they come from the alpha in microseconds, and a disk
            entry is keyed by the composited pixels, which two different alphas can share.
    """

    def __init__(self, latents: torch.Tensor, masks: torch.Tensor | None = None) -> None:
        if masks is not None and (len(masks) != len(latents) or masks.shape[-2:] != latents.shape[-2:]):
            raise ValueError(f"masks {tuple(masks.shape)} do not match the latents {tuple(latents.shape)}")
        self.latents = latents
        self.masks = masks

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.latents[index.to(self.latents.device)]

    def mask(self, index: torch.Tensor) -> torch.Tensor | None:
        """The loss masks of these images (B, 1, h, w), or None when the cache holds none."""
        return None if self.masks is None else self.masks[index.to(self.masks.device)]

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        images: torch.Tensor,
        encode,
        batch_size: int = 16,
        cache_dir: str | Path | None = None,
        key_extra: str = "",
    ) -> LatentCache:
        """Encode every image once (``encode``: uint8 (B, 3, H, W) -> latents), reusing disk entries.

        Args:
            images: uint8 (N, 3, H, W), the whole training set.
            encode: The module's ``encode_images``.
            batch_size: Images per VAE call.
            cache_dir: Folder of per-image latent files keyed by the image's pixels and ``key_extra``
                (the VAE fingerprint and ``pixel_scale``); unset: memory only.
            key_extra: Everything besides the pixels that the latent depends on.
        """
        keys = [hashlib.sha256(img.numpy().tobytes() + key_extra.encode()).hexdigest()[:32] for img in images]
        folder = Path(cache_dir).expanduser() if cache_dir else None
        found: dict[int, torch.Tensor] = {}
        if folder is not None and folder.is_dir():
            for i, key in enumerate(keys):
                path = folder / f"{key}.safetensors"
                if path.is_file():
                    found[i] = load_file(path)["latent"]
        missing = [i for i in range(len(images)) if i not in found]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            for i, latent in zip(chunk, encode(images[chunk]).float().cpu(), strict=True):
                found[i] = latent
                if folder is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                    save_file({"latent": latent.contiguous()}, folder / f"{keys[i]}.safetensors")
        log.info("latent cache: %d encoded, %d read from disk", len(missing), len(images) - len(missing))
        return cls(torch.stack([found[i] for i in range(len(images))]))


class TextCache:
    """Prompt embeddings of each image's (fixed) caption, indexed by the data set's image index."""

    def __init__(self, embeds: PromptEmbeds) -> None:
        self.embeds = embeds

    def __getitem__(self, index: torch.Tensor) -> PromptEmbeds:
        return self.embeds[index.to(self.embeds.sequence.device)]

    @classmethod
    @torch.no_grad()
    def build(cls, captions: list[str], encode, batch_size: int = 32) -> TextCache:
        """Encode each distinct caption once (``encode``: list[str] -> PromptEmbeds) and index per image."""
        distinct = list(dict.fromkeys(captions))
        parts = [encode(distinct[s : s + batch_size]) for s in range(0, len(distinct), batch_size)]
        table = PromptEmbeds.cat(parts)
        where = {caption: i for i, caption in enumerate(distinct)}
        index = torch.tensor([where[c] for c in captions], device=table.sequence.device)
        log.info("text cache: %d captions, %d distinct", len(captions), len(distinct))
        return cls(table[index])
