"""The first stage of the tiny punk bases' pretraining: the VAE.

The VAE (the same ``AutoencoderKL``, 8x down, 4 latent channels) trains as a KL autoencoder on
nearest-upscaled art: base-style punks and random flat-colour pixel art, so it codes colours it never saw
in a punk; aligned crops first, whole images last, then two decoder-only fine-tunes (the second also on
punks of any skin colour, :func:`refine_decoder`); its ``scaling_factor`` is measured as SD's was (1 / std
of the latents). :mod:`bespoke_pl.tinybases.pretrain` runs the stages.
"""

from __future__ import annotations

import logging
import random

import torch
import torch.nn.functional as F

from bespoke_pl.data.demo import SIZE, STYLES
from bespoke_pl.pixelart.grid import to_model_range, upscale_nearest
from bespoke_pl.tinybases.punks import PIXEL_SCALE, punk_batch, punk_image, random_art, recoloured_punks
from bespoke_pl.training.optim import lr_factor

log = logging.getLogger(__name__)


def _art_batch(rng: random.Random, size: int, crop: int) -> torch.Tensor:
    """Half punks, half random art, cropped on the art grid to ``crop`` x ``crop`` art pixels."""
    punks, _ = punk_batch(rng, size - size // 2)
    art = torch.cat([punks, random_art(rng, size // 2)])
    tops = [rng.randrange(SIZE - crop + 1) for _ in range(size)]
    lefts = [rng.randrange(SIZE - crop + 1) for _ in range(size)]
    return torch.stack([a[:, t : t + crop, s : s + crop] for a, t, s in zip(art, tops, lefts, strict=True)])


def _vae_loss(
    vae,
    art: torch.Tensor,
    generator: torch.Generator,
    kl_weight: float,
    block_weight: float = 4.0,
    latent_noise: torch.Tensor | None = None,
):
    """(loss, reconstruction) of one batch of art; see :func:`train_vae`. ``latent_noise``: per image, the
    std of extra Gaussian noise on the latent (unscaled units), as a diffusion sample's error adds."""
    x = to_model_range(upscale_nearest(art, PIXEL_SCALE)).contiguous(memory_format=torch.channels_last)
    posterior = vae.encode(x).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    if latent_noise is not None:
        z = z + latent_noise.view(-1, 1, 1, 1) * torch.randn(z.shape, generator=generator)
    decoded = vae.decode(z).sample
    blocks = F.avg_pool2d(decoded, PIXEL_SCALE)
    reconstruction = (
        F.l1_loss(decoded, x)
        + F.mse_loss(decoded, x)
        + block_weight * F.mse_loss(blocks, to_model_range(art))
    )
    return reconstruction + kl_weight * posterior.kl().mean() / posterior.mean[0].numel(), reconstruction


def scheduled_step(optimizer: torch.optim.Optimizer, parameters, loss: torch.Tensor, lr: float) -> None:
    """One optimizer step of ``loss`` at ``lr`` (the schedule's rate for this step), the gradient's norm
    clipped to 1 (as ``fit``'s ``gradient_clip_val`` 1): how every stage of the recipe steps."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()


def _optimise(vae, parameters, steps: int, lr: float, batches, loss, name: str) -> None:
    """``steps`` AdamW steps of ``loss(art)`` on ``batches(step)``, cosine after 100 warm-up steps."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = lr_factor("cosine", 100, steps)  # the trainer's schedule
    # channels_last: about 1.5x faster for these small convolutions on CPU; the weights are the same.
    vae.to(memory_format=torch.channels_last).train()
    for step in range(steps):
        value, reconstruction = loss(batches(step))
        scheduled_step(optimizer, parameters, value, lr * schedule(step))
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
    loss = lambda art: _vae_loss(vae, art, generator, kl_weight)  # noqa: E731
    _optimise(vae, list(vae.parameters()), steps, lr, batches, loss, "vae")


def _decoder_only(vae) -> list[torch.nn.Parameter]:
    """Freeze the encoder (the latent space a UNet learns) and return the decoder's parameters."""
    vae.requires_grad_(False)
    decoder = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for parameter in decoder:
        parameter.requires_grad_(True)
    return decoder


def polish_decoder(vae, steps: int, batch_size: int, seed: int, lr: float = 5e-4) -> None:
    """Fine-tune only the decoder on whole images, as SD's VAE decoder was fine-tuned after the fact.

    The encoder, and so the latent space a UNet learns, stays as it is: the UNet's training never sees the
    decoder, so polishing before or after it gives the same UNet.
    """
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    loss = lambda art: _vae_loss(vae, art, generator, 1e-6)  # noqa: E731
    batches = lambda step: _art_batch(rng, batch_size // 2, SIZE)  # noqa: E731
    _optimise(vae, _decoder_only(vae), steps, lr, batches, loss, "decoder")


def refine_decoder(
    vae,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float = 3e-4,
    latent_noise: float = 0.05,
    block_weight: float = 8.0,
) -> None:
    """A second decoder-only fine-tune, for exact colours in any skin tone and some slack for samples.

    Whole images, ``batch_size / 2`` a step: a quarter base punks, the rest split between
    :func:`recoloured_punks` and random flat-colour art; the block means weigh twice as much as in
    :func:`train_vae` (the snap reads them). The last quarter of each batch (random art) gets extra latent
    noise of a std drawn up to ``latent_noise`` (scaled units, where the latents have unit std), the size
    of a diffusion sample's error. At 0.05 it leaves the samples' background grain as it was; 0.15 on half
    the batch lowered it a little (torso share 0.19 -> 0.12 after the palette lock) but left the round
    trip under 98% (96.3% on the neon punks), the exactness the trainer checks before every run.
    """
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    images = batch_size // 2
    plain = noisy = images // 4  # as many noised random-art images at the end as base punks at the start
    art = (images - plain) // 2
    unscaled = latent_noise / vae.config.scaling_factor
    parts = [
        (lambda r, n: punk_batch(r, n)[0], plain),
        (recoloured_punks, images - plain - art),
        (random_art, art),
    ]

    def batches(step: int) -> torch.Tensor:
        return torch.cat([draw(rng, n) for draw, n in parts if n])  # tiny test batches leave parts empty

    def loss(batch: torch.Tensor):
        noise = torch.zeros(len(batch))
        noise[len(batch) - noisy :] = torch.rand(noisy, generator=generator) * unscaled
        return _vae_loss(vae, batch, generator, 0.0, block_weight, noise)

    _optimise(vae, _decoder_only(vae), steps, lr, batches, loss, "decoder refinement")


@torch.no_grad()
def measured_scaling_factor(vae, seed: int, count: int = 256) -> float:
    """1 / std of the latents of ``count`` punks, rounded to 4 digits: unit-variance latents to diffuse."""
    images, _ = punk_batch(random.Random(seed), count)
    latents = vae.encode(to_model_range(upscale_nearest(images, PIXEL_SCALE))).latent_dist.mean
    return round(1.0 / float(latents.std()), 4)


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
