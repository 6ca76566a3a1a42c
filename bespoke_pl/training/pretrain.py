"""Pretrain the tiny punk bases: a tiny SD 1.5- or SDXL-shaped model that really draws base-style punks.

Random tiny models (:mod:`bespoke_pl.offline.tiny`) draw noise, so nothing trained on them can show learning. This
recipe turns one into a small but real text-to-image model, on CPU and from a fixed seed:

1. the VAE (the same ``AutoencoderKL``, 8x down, 4 latent channels) as a KL autoencoder on nearest-upscaled
   art: base-style punks and random flat-colour pixel art, so it codes colours it never saw in a punk;
   its ``scaling_factor`` is then measured (1 / std of the latents), as SD's was;
2. the UNet as an epsilon-prediction denoiser of those latents, conditioned on the captions through the
   text encoders (trained with it) with the trainer's own clip skip, pooled embedding and SDXL time ids
   (:func:`bespoke_pl.diffusion.conditioning.predict_noise`); captions are dropped 10% of the time so
   classifier-free guidance works; the saved weights are an exponential moving average. Offset noise and
   a loss weighted up at high noise (``--noise_offset 0.1 --high_noise_weight 20``) make it take the
   background from the caption (:func:`train_unet`); the shipped bases predate them (defaults 0 and 1).

The data is an endless stream of base-style punks (:mod:`bespoke_pl.data.demo`), drawn fresh for every
batch. The result is an ordinary diffusers folder; ``tiny-punks:sdxl`` / ``tiny-punks:sd15`` name the
copies shipped in the package (:mod:`bespoke_pl.offline.pretrained`).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bespoke_pl.data.demo import SIZE, STYLES, caption, demo_traits, draw_punk, sample_traits
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

log = logging.getLogger(__name__)

PIXEL_SCALE = 8  # the bases draw 24x24 art at 192 px: one art pixel per latent cell
CLIP_SKIP = {"sd15": 1, "sdxl": 2}  # what the shipped configs train with
# The UNet recipe of the shipped bases: plain epsilon MSE. noise_offset 0.1 with high_noise_weight 20 makes
# the samples follow the prompted background (16 of 16 against 3 of 16, see train_unet); the shipped
# weights are not regenerated with it yet, so the defaults reproduce them.
NOISE_OFFSET = 0.0
HIGH_NOISE_WEIGHT = 1.0


def punk_batch(rng: random.Random, size: int, style: str = "base") -> tuple[torch.Tensor, list[str]]:
    """``size`` fresh punks: uint8 (B, 3, 24, 24) and their captions."""
    traits = [sample_traits(rng) for _ in range(size)]
    return torch.stack([punk_tensor(t, style) for t in traits]), [caption(t) for t in traits]


def punk_tensor(traits, style: str = "base") -> torch.Tensor:
    """One drawn punk as uint8 (3, 24, 24)."""
    return torch.from_numpy(np.array(draw_punk(traits, style))).permute(2, 0, 1)


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


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _art_batch(rng: random.Random, size: int, crop: int) -> torch.Tensor:
    """Half punks, half random art, cropped on the art grid to ``crop`` x ``crop`` art pixels."""
    punks, _ = punk_batch(rng, size - size // 2)
    art = torch.cat([punks, random_art(rng, size // 2)])
    tops = [rng.randrange(SIZE - crop + 1) for _ in range(size)]
    lefts = [rng.randrange(SIZE - crop + 1) for _ in range(size)]
    return torch.stack([a[:, t : t + crop, s : s + crop] for a, t, s in zip(art, tops, lefts, strict=True)])


def _vae_loss(vae, art: torch.Tensor, generator: torch.Generator, kl_weight: float):
    """(loss, reconstruction) of one batch of art; see :func:`train_vae`."""
    x = to_model_range(upscale_nearest(art, PIXEL_SCALE)).contiguous(memory_format=torch.channels_last)
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    decoded = vae.decode(z).sample
    blocks = F.avg_pool2d(decoded, PIXEL_SCALE)
    reconstruction = (
        F.l1_loss(decoded, x) + F.mse_loss(decoded, x) + 4 * F.mse_loss(blocks, to_model_range(art))
    )
    return reconstruction + kl_weight * posterior.kl().mean() / posterior.mean[0].numel(), reconstruction


def _optimise(
    vae, parameters, steps: int, lr: float, batches, generator, kl_weight: float, name: str
) -> None:
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    # channels_last: about 1.5x faster for these small convolutions on CPU; the weights are the same.
    vae.to(memory_format=torch.channels_last).train()
    for step in range(steps):
        loss, reconstruction = _vae_loss(vae, batches(step), generator, kl_weight)
        for group in optimizer.param_groups:
            group["lr"] = lr * _cosine(step, steps, 100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step % 250 == 0 or step == steps - 1:
            log.info("%s step %d/%d: reconstruction %.4f", name, step + 1, steps, reconstruction.item())
    vae.to(memory_format=torch.contiguous_format).eval().requires_grad_(False)


def train_vae(vae, steps: int, batch_size: int, seed: int, lr: float = 2e-3, kl_weight: float = 1e-6) -> None:
    """Train the VAE in place on nearest-upscaled art at pixel scale 8.

    The first three quarters of the steps see ``2 * batch_size`` crops of 8 x 8 art pixels, the last
    quarter ``batch_size / 2`` whole 24 x 24 images: crops are cheap, but GroupNorm normalises over the
    whole image, so the colours are only exact once it has seen whole images. Crops start on the art grid,
    so every 8 x 8 block is one art pixel and one latent cell, as in use.

    Loss: L1 + MSE per pixel (sharp block edges), MSE of each 8 x 8 block's mean (the exact colour the snap
    reads off), and a small KL term per latent element (SD's VAE uses 1e-6 as well). The decoder sees a
    posterior sample, not the mean, so it stays blocky when a diffusion sample is slightly off.
    """
    rng = random.Random(seed)
    crops_until = steps * 3 // 4

    def batches(step: int) -> torch.Tensor:
        return (
            _art_batch(rng, 2 * batch_size, 8)
            if step < crops_until
            else _art_batch(rng, batch_size // 2, SIZE)
        )

    vae.requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    _optimise(vae, list(vae.parameters()), steps, lr, batches, generator, kl_weight, "vae")


def polish_decoder(vae, steps: int, batch_size: int, seed: int, lr: float = 5e-4) -> None:
    """Fine-tune only the decoder on whole images, as SD's VAE decoder was fine-tuned after the fact.

    The encoder, and so the latent space a UNet learns, stays as it is: the UNet's training never sees the
    decoder, so polishing before or after it gives the same UNet.
    """
    rng = random.Random(seed)
    vae.requires_grad_(False)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for parameter in decoder:
        parameter.requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    _optimise(
        vae,
        decoder,
        steps,
        lr,
        lambda step: _art_batch(rng, batch_size // 2, SIZE),
        generator,
        1e-6,
        "decoder",
    )


@torch.no_grad()
def measured_scaling_factor(vae, seed: int, count: int = 256) -> float:
    """1 / std of the latents of ``count`` punks, rounded to 4 digits: unit-variance latents to diffuse."""
    images, _ = punk_batch(random.Random(seed), count)
    latents = vae.encode(to_model_range(upscale_nearest(images, PIXEL_SCALE))).latent_dist.mean
    return round(1.0 / float(latents.std()), 4)


def train_unet(
    unet, vae, tokenizers, text_encoders, family: Family, scheduler_config: dict, steps: int,
    batch_size: int, seed: int, lr: float = 1e-3, ema_decay: float = 0.999, caption_dropout: float = 0.1,
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
    ``noise_offset=0, high_noise_weight=1`` is the first shipped recipe, whose samples took their background
    from the start noise (the prompted one in 3 of 16 samples, about chance).

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
            group["lr"] = lr * _cosine(step, steps, 200)
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


@torch.no_grad()
def vae_report(vae, count: int = 48) -> list[str]:
    """The project's round trip at pixel scale 8 on each demo style (the demo sets' first ``count`` punks)."""
    from bespoke_pl.pixelart.roundtrip import vae_round_trip

    lines = []
    for style in STYLES:
        images = torch.stack([punk_image(i, style) for i in range(count)])
        result = vae_round_trip(vae, images, PIXEL_SCALE)
        lines.append(f"VAE round trip, {style} demo punks: {result.line()}")
    return lines


def punk_image(index: int, style: str, seed: int = 0) -> torch.Tensor:
    """Demo punk ``index`` of the set ``write_demo_dataset(seed=seed, style=style)`` writes: uint8 (3, 24, 24)."""
    return punk_tensor(demo_traits(index, seed), style)


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
) -> Path:
    """Pretrain a tiny base and write it as a diffusers folder ``out`` (which must not exist or be empty).

    Args:
        family: ``sd15`` or ``sdxl``.
        out: The folder to write.
        seed: Seeds the random start (:func:`bespoke_pl.offline.tiny.write_tiny_model`), the data and the noise;
            the same seed on the same CPU and thread count gives the same weights.
        vae_steps: VAE optimizer steps (skipped with ``vae_from``).
        decoder_steps: Steps of decoder-only fine-tuning after them (:func:`polish_decoder`).
        unet_steps: UNet optimizer steps.
        batch_size: Images per step (the VAE's crops: twice as many; its whole images: half as many).
        vae_from: A tiny-punks folder whose trained VAE to reuse (both families share one).
        noise_offset: See :func:`train_unet`.
        high_noise_weight: See :func:`train_unet`.
    """
    from diffusers import AutoencoderKL

    from bespoke_pl.diffusion.base import load_base

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        start = write_tiny_model(family, Path(scratch) / "start", seed=seed)
        base = load_base(str(start), family)
        if vae_from is not None:
            vae = AutoencoderKL.from_pretrained(str(vae_from), subfolder="vae")
        else:
            vae = base.vae
            train_vae(vae, vae_steps, batch_size, seed)
            polish_decoder(vae, decoder_steps, batch_size, seed + 3)
            vae.register_to_config(scaling_factor=measured_scaling_factor(vae, seed + 1))
        vae_done = time.perf_counter()
        for line in vae_report(vae):
            log.info("%s", line)
        vae.eval().requires_grad_(False)
        train_unet(
            base.unet, vae, base.tokenizers, base.text_encoders, family, base.scheduler_config,
            unet_steps, batch_size, seed + 2, noise_offset=noise_offset,
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
