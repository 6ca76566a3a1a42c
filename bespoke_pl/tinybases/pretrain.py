"""Pretrain the tiny punk bases: a tiny SD 1.5- or SDXL-shaped model that really draws base-style punks.

Random tiny models (:mod:`bespoke_pl.offline.tiny`) draw noise, so nothing trained on them can show learning. This
recipe turns one into a small but real text-to-image model, on CPU and from a fixed seed:

1. the VAE (the same ``AutoencoderKL``, 8x down, 4 latent channels) as a KL autoencoder on nearest-upscaled
   art: base-style punks and random flat-colour pixel art, so it codes colours it never saw in a punk,
   then its decoder alone, lastly also on punks of random skin colours (the UNet never sees those);
   its ``scaling_factor`` is then measured (1 / std of the latents), as SD's was;
2. the UNet as an epsilon-prediction denoiser of those latents, conditioned on the captions through the
   text encoders (trained with it) with the trainer's own clip skip, pooled embedding and SDXL time ids
   (:func:`bespoke_pl.diffusion.conditioning.predict_noise`); captions are dropped 10% of the time so
   classifier-free guidance works; the saved weights are an exponential moving average. Offset noise and
   a loss weighted up at high noise (``noise_offset`` 0.1, ``high_noise_weight`` 20, the defaults) make it
   take the background from the caption (:func:`~bespoke_pl.tinybases.unet.train_unet`).

The data is an endless stream of base-style punks (:mod:`bespoke_pl.tinybases.punks`), drawn fresh for
every batch. The result is an ordinary diffusers folder; ``tiny-punks:sdxl`` / ``tiny-punks:sd15`` name the
copies shipped in the package (:mod:`bespoke_pl.offline.pretrained`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bespoke_pl.files import atomic_folder
from bespoke_pl.offline.tiny import Family, write_tiny_model
from bespoke_pl.tinybases.unet import HIGH_NOISE_WEIGHT, NOISE_OFFSET, UNET_LR, train_unet
from bespoke_pl.tinybases.vae import (
    measured_scaling_factor,
    polish_decoder,
    refine_decoder,
    train_vae,
    vae_report,
)

log = logging.getLogger(__name__)


def pretrain_tiny_punks(
    family: Family,
    out: str | Path,
    seed: int = 0,
    vae_steps: int = 4000,
    decoder_steps: int = 1000,
    unet_steps: int = 5000,
    batch_size: int = 16,
    vae_from: str | Path | None = None,
    noise_offset: float = NOISE_OFFSET,
    high_noise_weight: float = HIGH_NOISE_WEIGHT,
    refine_steps: int = 900,
    unet_from: str | Path | None = None,
    unet_lr: float = UNET_LR,
) -> Path:
    """Pretrain a tiny base and write it as a diffusers folder ``out`` (which must not exist or be empty).

    Args:
        family: ``sd15`` or ``sdxl``.
        out: The folder to write.
        seed: Seeds the random start (:func:`bespoke_pl.offline.tiny.write_tiny_model`), the data and the noise;
            the same seed on the same CPU and thread count gives the same weights.
        vae_steps: VAE optimizer steps (skipped with ``vae_from``).
        decoder_steps: Steps of decoder-only fine-tuning after them (:func:`polish_decoder`).
        refine_steps: Steps of the second decoder fine-tune (:func:`refine_decoder`), after the first.
        unet_steps: UNet optimizer steps.
        batch_size: Images per step (the VAE's crops: twice as many; its whole images: half as many).
        vae_from: A tiny-punks folder whose trained VAE to reuse (both families share one).
        unet_from: A tiny-punks folder of ``family`` to go on training: its UNet and text encoders are the
            start instead of random weights, its VAE (unless ``vae_from``) is kept, and the output is that
            folder with the further-trained parts. A second cosine cycle from a trained model at a lower
            ``unet_lr`` is how the shipped bases got longer training without redoing the first.
        unet_lr: Peak learning rate of the UNet stage.
        noise_offset: See :func:`train_unet`.
        high_noise_weight: See :func:`train_unet`.
    """
    from diffusers import AutoencoderKL

    from bespoke_pl.diffusion.base import load_base, resolve_spec

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if unet_from is not None:
            start = Path(resolve_spec(str(unet_from))).expanduser()
        else:
            start = write_tiny_model(family, Path(scratch) / "start", seed=seed)
        base = load_base(str(start), family)
        # The start's VAE as loaded with it (trained with --unet_from, random otherwise), unless --vae_from.
        vae = base.vae if vae_from is None else AutoencoderKL.from_pretrained(str(vae_from), subfolder="vae")
        if vae_from is None and unet_from is None:
            train_vae(vae, vae_steps, batch_size, seed)
            polish_decoder(vae, decoder_steps, batch_size, seed + 3)
            refine_decoder(vae, refine_steps, batch_size, seed + 4)
            vae.register_to_config(scaling_factor=measured_scaling_factor(vae, seed + 1))
        vae_done = time.perf_counter()
        for line in vae_report(vae):
            log.info("%s", line)
        vae.eval().requires_grad_(False)
        train_unet(
            base.unet,
            vae,
            base.tokenizers,
            base.text_encoders,
            family,
            base.scheduler_config,
            steps=unet_steps,
            batch_size=batch_size,
            seed=seed + 2,
            lr=unet_lr,
            noise_offset=noise_offset,
            high_noise_weight=high_noise_weight,
        )
        with atomic_folder(out) as tmp:
            # The start's tokenizers, scheduler and index as they are; every trained part saved over its copy.
            shutil.copytree(start, tmp, dirs_exist_ok=True)
            trained = {"unet": base.unet, "vae": vae, "text_encoder": base.text_encoders[0]}
            if family == "sdxl":
                trained["text_encoder_2"] = base.text_encoders[1]
            for name, module in trained.items():
                module.save_pretrained(tmp / name, safe_serialization=True)
    total = time.perf_counter() - started
    log.info(
        "pretrained tiny-punks %s in %.0f s (VAE %.0f s, UNet %.0f s): %s",
        family,
        total,
        vae_done - started,
        total - (vae_done - started),
        out,
    )
    return Path(out)
