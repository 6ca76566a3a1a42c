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
   take the background from the caption (:func:`train_unet`).

The data is an endless stream of base-style punks (:mod:`bespoke_pl.data.demo`), drawn fresh for every
batch. The result is an ordinary diffusers folder; ``tiny-punks:sdxl`` / ``tiny-punks:sd15`` name the
copies shipped in the package (:mod:`bespoke_pl.offline.pretrained`).
"""

from __future__ import annotations

import copy
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bespoke_pl.data.demo import SIZE
from bespoke_pl.diffusion.conditioning import encode_prompts, predict_noise
from bespoke_pl.diffusion.objective import (
    add_noise,
    alphas_cumprod_from_config,
    diffusion_loss,
    make_noise,
    sample_timesteps,
)
from bespoke_pl.files import atomic_folder
from bespoke_pl.offline.tiny import Family, write_tiny_model
from bespoke_pl.pixelart.grid import to_model_range, upscale_nearest
from bespoke_pl.training.pretrain_vae import (
    PIXEL_SCALE,
    cosine,
    measured_scaling_factor,
    polish_decoder,
    punk_batch,
    refine_decoder,
    train_vae,
    vae_report,
)

log = logging.getLogger(__name__)

CLIP_SKIP = {"sd15": 1, "sdxl": 2}  # what the shipped configs train with
# The UNet recipe of the shipped bases: with noise_offset 0.1 and high_noise_weight 20 the samples follow
# the prompted background (16 of 16 against 3 of 16 with plain epsilon MSE, 0 and 1; see train_unet).
NOISE_OFFSET = 0.1
HIGH_NOISE_WEIGHT = 20.0
UNET_LR = 1e-3  # peak; the shipped bases' second cycle (--unet_from) ran at 3e-4


def train_unet(
    unet, vae, tokenizers, text_encoders, family: Family, scheduler_config: dict, steps: int,
    batch_size: int, seed: int, lr: float = UNET_LR, ema_decay: float = 0.999, caption_dropout: float = 0.1,
    noise_offset: float = NOISE_OFFSET, high_noise_weight: float = HIGH_NOISE_WEIGHT,
):  # fmt: skip
    """Train the UNet and the text encoders as a text-to-image denoiser of base-style punks, in place.

    The text encoders train with the UNet: random CLIP features differ between captions by only a few
    percent, and a frozen random encoder left the UNet deaf to its prompts; training them stands in for
    CLIP's own pretraining. At the end every trained module holds the EMA of its weights.

    The background is the one trait only the caption can give at the start of sampling, and plain epsilon
    MSE barely asks for it: a flat background is the image's largest, lowest-frequency part, visible in
    x_t down to a signal-to-noise ratio of a few percent, so the loss only needs the caption where it weighs
    an x_0 error by that tiny SNR. ``noise_offset`` and ``high_noise_weight`` (below) make the caption pay;
    ``noise_offset=0, high_noise_weight=1`` was the first shipped bases' recipe, whose samples took their
    background from the start noise (the prompted one in 3 of 16 samples, about chance).

    Args:
        unet: The UNet to train.
        vae: The trained VAE (frozen) whose latent means are the data.
        tokenizers: The base's tokenizers.
        text_encoders: The base's text encoders, trained with the UNet.
        family: ``sd15`` or ``sdxl``.
        scheduler_config: The base's noise schedule.
        steps: Optimizer steps.
        batch_size: Fresh punks per step.
        seed: Seeds the data, caption dropout and noise.
        lr: Peak learning rate (cosine after 200 warm-up steps).
        ema_decay: Decay of the weight average that is saved.
        caption_dropout: Share of empty captions (the unconditional branch of guidance).
        noise_offset: Std of a per-(image, channel) constant added to the noise
            (:func:`bespoke_pl.diffusion.objective.make_noise`). Without it the latents' per-channel mean, which
            codes the background colour, still shows through the noise at t = 999 (the backgrounds' means
            differ by ~1.3 scaled units, times sqrt(alpha_bar) = 0.07, against 0.04 of noise in a 24 x 24
            mean), so the model read the background off x_t instead of the caption, and at sampling off
            the start noise.
        high_noise_weight: Per-sample loss weight min(1 / alpha_bar_t, high_noise_weight): the epsilon loss
            re-weighted towards the x_0 loss (1 / alpha_bar is the v-prediction loss in epsilon terms) at
            high noise, where the caption decides the background; it is 1 at low noise (t < ~100) and
            reaches the cap from t ~ 700 on. Not min-SNR: it never shrinks the low-noise steps' weight.
    """
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    alphas = alphas_cumprod_from_config(scheduler_config)
    clip_skip, size = CLIP_SKIP[family], SIZE * PIXEL_SCALE
    scale = vae.config.scaling_factor
    trained = torch.nn.ModuleList([unet, *text_encoders]).train().requires_grad_(True)
    ema = copy.deepcopy(trained).requires_grad_(False)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=0.01)
    for step in range(steps):
        images, captions = punk_batch(rng, batch_size)
        captions = ["" if rng.random() < caption_dropout else c for c in captions]
        with torch.no_grad():
            x = to_model_range(upscale_nearest(images, PIXEL_SCALE))
            latents = vae.encode(x).latent_dist.mean * scale  # the posterior mean, as the trainer caches
        embeds = encode_prompts(captions, tokenizers, text_encoders, clip_skip)
        noise = make_noise(latents, noise_offset, generator=generator)
        timesteps = sample_timesteps(batch_size, len(alphas), generator=generator)
        noisy = add_noise(latents, noise, timesteps, alphas)
        # Epsilon MSE, SD's own objective, up-weighted at high noise only (see Args): min-SNR weighting,
        # which down-weights the low-noise steps instead, left a grain of undenoised latent noise.
        weights = (1 / alphas[timesteps]).clamp(max=high_noise_weight) if high_noise_weight > 1 else None
        loss = diffusion_loss(predict_noise(unet, noisy, timesteps, embeds, size), noise, weights)
        for group in optimizer.param_groups:
            group["lr"] = lr * cosine(step, steps, 200)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        optimizer.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for kept, current in zip(ema.parameters(), trained.parameters(), strict=True):
                kept.lerp_(current, 1 - decay)
        if step % 250 == 0 or step == steps - 1:
            log.info("unet step %d/%d: loss %.4f", step + 1, steps, loss.item())
    with torch.no_grad():
        for current, kept in zip(trained.parameters(), ema.parameters(), strict=True):
            current.copy_(kept)
    trained.eval().requires_grad_(False)


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
            base.unet, vae, base.tokenizers, base.text_encoders, family, base.scheduler_config,
            unet_steps, batch_size, seed + 2, lr=unet_lr, noise_offset=noise_offset,
            high_noise_weight=high_noise_weight,
        )  # fmt: skip
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
        family, total, vae_done - started, total - (vae_done - started), out,
    )  # fmt: skip
    return Path(out)
