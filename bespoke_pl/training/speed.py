"""Fit-time speed and memory wiring of the module: caches, offloading frozen parts, attention kernels.

The caches themselves are in :mod:`bespoke_pl.training.cache`; this decides when they apply and moves modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.training.cache import LatentCache, TextCache, latent_cache_refusal, text_cache_refusal

log = logging.getLogger(__name__)


def set_attention(unet: torch.nn.Module, kind: str) -> None:
    """Select the UNet's attention kernel: PyTorch SDPA (fused, memory-efficient) or the classic one."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0() if kind == "sdpa" else AttnProcessor())


def _frozen_parts(module) -> list[torch.nn.Module]:
    parts = []
    if module.latent_cache is not None:
        parts.append(module.vae)
    if module.text_cache is not None:
        parts.extend(module.text_encoders)
    return parts


def cache_latents(module, pairs) -> LatentCache:
    """The posterior-mean latents of ``pairs`` on the module's device (from the disk cache where there),
    with their loss masks when the pairs carry an alpha (``data.alpha_mask``)."""

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return module.encode_images(pixels, mean=True)

    built = LatentCache.build(
        pairs.images, encode, cache_dir=module.hparams.latent_cache_dir, key_extra=module.latent_key
    )
    latents = built.latents.to(module.device)
    masks = module.loss_mask(pairs.alphas, latents.shape[-2:]) if pairs.alphas is not None else None
    return LatentCache(latents, masks)


def build_caches(module, data: PixelArtDataModule | None) -> tuple[LatentCache | None, TextCache | None]:
    """The latent and text caches where they are valid (logging why not otherwise); the module keeps them.

    Args:
        module: The :class:`~bespoke_pl.training.module.PixelLoRAModule`, already on its device.
        data: The data module, whose in-memory pairs and caption options decide what is cacheable; None
            (loaders or a data module of the user's own): no caches.
    """
    h = module.hparams
    if data is None:
        log.info("caches off: the data module does not hold the training set in memory")
        return None, None
    pairs = data.training_pairs()
    latents = text = None
    if h.cache_latents:
        refusal = latent_cache_refusal(h.latent_sampling)
        if refusal:
            log.warning("latent cache off: %s", refusal)
        else:
            latents = cache_latents(module, pairs)
    if h.cache_text:
        refusal = text_cache_refusal(
            h.train_text_encoder, data.hparams.caption_dropout, data.hparams.shuffle_captions
        )
        if refusal:
            log.warning("text-embedding cache off: %s", refusal)
        else:
            text = TextCache.build(pairs.captions, module.encode_text)
    return latents, text


def offload_frozen(module) -> None:
    """Move the parts the caches stand in for (VAE, frozen text encoders) off the accelerator."""
    if module.hparams.offload_frozen and module.device.type != "cpu":
        for part in _frozen_parts(module):
            part.to("cpu")
        if module.device.type == "cuda":
            torch.cuda.empty_cache()


def bring_frozen_back(module) -> Callable[[], None]:
    """Move offloaded frozen parts to the module's device for sampling; returns the undo."""
    moved = [p for p in _frozen_parts(module) if next(p.parameters()).device != module.device]
    for part in moved:
        part.to(module.device)

    def restore() -> None:
        for part in moved:
            part.to("cpu")

    return restore
