"""The second stage of the tiny punk bases' pretraining: the UNet and the text encoders as a text-to-image
denoiser of the VAE's latents, on the trainer's own objective (:mod:`bespoke_pl.diffusion.objective`),
conditioning, timestep sampling, learning-rate schedule and EMA.
"""

from __future__ import annotations

import logging
import random

import torch

from bespoke_pl.callbacks.ema import ema_decay as decay_at
from bespoke_pl.callbacks.ema import start_average, update_average
from bespoke_pl.data.demo import SIZE
from bespoke_pl.diffusion.conditioning import encode_prompts, predict_noise
from bespoke_pl.diffusion.objective import (
    add_noise,
    alphas_cumprod_from_config,
    diffusion_loss,
    make_noise,
)
from bespoke_pl.diffusion.timesteps import sample_training_timesteps
from bespoke_pl.offline.tiny import Family
from bespoke_pl.pixelart.grid import to_model_range, upscale_nearest
from bespoke_pl.tinybases.punks import PIXEL_SCALE, punk_batch
from bespoke_pl.tinybases.vae import scheduled_step
from bespoke_pl.training.optim import lr_factor

log = logging.getLogger(__name__)

CLIP_SKIP = {"sd15": 1, "sdxl": 2}  # what the shipped configs train with
# The UNet recipe of the shipped bases: with noise_offset 0.1 and high_noise_weight 20 the samples follow
# the prompted background (16 of 16 against 3 of 16 with plain epsilon MSE, 0 and 1; see train_unet).
NOISE_OFFSET = 0.1
HIGH_NOISE_WEIGHT = 20.0
UNET_LR = 1e-3  # peak; the shipped bases' second cycle (--unet_from) ran at 3e-4


def train_unet(
    unet,
    vae,
    tokenizers,
    text_encoders,
    family: Family,
    scheduler_config: dict,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float = UNET_LR,
    ema_decay: float = 0.999,
    caption_dropout: float = 0.1,
    noise_offset: float = NOISE_OFFSET,
    high_noise_weight: float = HIGH_NOISE_WEIGHT,
):
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
    parameters = list(trained.parameters())
    average = start_average(parameters)  # the trainer's EMA, with its warmup (LoRAEMA)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    schedule = lr_factor("cosine", 200, steps)  # the trainer's schedule (model.lr_schedule cosine)
    for step in range(steps):
        images, captions = punk_batch(rng, batch_size)
        captions = ["" if rng.random() < caption_dropout else c for c in captions]
        with torch.no_grad():
            x = to_model_range(upscale_nearest(images, PIXEL_SCALE))
            latents = vae.encode(x).latent_dist.mean * scale  # the posterior mean, as the trainer caches
        embeds = encode_prompts(captions, tokenizers, text_encoders, clip_skip)
        noise = make_noise(latents, noise_offset, generator=generator)
        timesteps = sample_training_timesteps(batch_size, len(alphas), generator=generator)  # uniform
        noisy = add_noise(latents, noise, timesteps, alphas)
        # Epsilon MSE, SD's own objective, up-weighted at high noise only (see Args): min-SNR weighting,
        # which down-weights the low-noise steps instead, left a grain of undenoised latent noise.
        weights = (1 / alphas[timesteps]).clamp(max=high_noise_weight) if high_noise_weight > 1 else None
        loss = diffusion_loss(predict_noise(unet, noisy, timesteps, embeds, size), noise, weights)
        scheduled_step(optimizer, parameters, loss, lr * schedule(step))
        update_average(average, parameters, decay_at(ema_decay, step, warmup=True))
        if step % 250 == 0 or step == steps - 1:
            log.info("unet step %d/%d: loss %.4f", step + 1, steps, loss.item())
    with torch.no_grad():
        for current, kept in zip(parameters, average, strict=True):
            current.copy_(kept)
    trained.eval().requires_grad_(False)
