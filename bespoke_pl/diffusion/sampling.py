"""Image generation with the training components: a diffusers pipeline fed our own prompt embeddings.

The pipeline is built around the very modules being trained (no copies), and receives embeddings from
:func:`bespoke_pl.diffusion.conditioning.encode_prompts`, so samples use exactly the training clip skip. Each image
has its own CPU generator seeded from its seed, so the same seed gives the same start noise on any device
and in any batch, and epochs can be compared image by image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import nn

from bespoke_pl.diffusion.conditioning import PromptEmbeds
from bespoke_pl.pixelart.roundtrip import images_per_vae_call

Sampler = Literal["euler", "euler_a", "ddim", "dpmpp_2m"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)


def make_scheduler(name: str, scheduler_config: dict):
    """A diffusers sampling scheduler of the given kind, configured from the base's scheduler config."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    classes = {
        "euler": EulerDiscreteScheduler,
        "euler_a": EulerAncestralDiscreteScheduler,
        "ddim": DDIMScheduler,
        "dpmpp_2m": DPMSolverMultistepScheduler,
    }
    if name not in classes:
        raise ValueError(f"sampler {name!r} is not one of {SAMPLERS}")
    # DDIM clips its x_0 estimate to [-1, 1] unless told not to: right for pixels, ruinous for latents of
    # unit std. SD's configs say clip_sample false, but an Euler-only config (tiny SDXL, some fine-tunes)
    # lacks the key, and DDIM's default (true) turned the tiny SDXL base's samples to mush (IoU 0.45).
    overrides = {"clip_sample": False} if name == "ddim" and "clip_sample" not in scheduler_config else {}
    return classes[name].from_config(scheduler_config, **overrides)


def build_pipeline(
    family: str,
    unet: nn.Module,
    vae: nn.Module,
    tokenizers: list,
    text_encoders: list[nn.Module],
    scheduler_config: dict,
    sampler: str = "euler",
):
    """A StableDiffusion(XL)Pipeline sharing the given modules."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = make_scheduler(sampler, scheduler_config)
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoders[0],
            text_encoder_2=text_encoders[1],
            tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1],
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoders[0],
            tokenizer=tokenizers[0],
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(
    pipe,
    encode: Callable[[list[str]], PromptEmbeds],
    prompts: list[str],
    seeds: list[int],
    size: int,
    negative_prompt: str = "",
    steps: int = 20,
    guidance_scale: float = 5.0,
    batch_size: int = 4,
    conditioning_size: int | None = None,
) -> torch.Tensor:
    """Generate one image per (prompt, seed) pair at ``size`` x ``size``: uint8 (N, 3, size, size).

    Args:
        pipe: From :func:`build_pipeline`.
        encode: Captions -> :class:`PromptEmbeds`, the training encoder (same clip skip).
        prompts: N prompts.
        seeds: N seeds.
        size: Image side in pixels (24 * pixel_scale).
        negative_prompt: Prompt for the unconditional branch of classifier-free guidance.
        steps: Denoising steps.
        guidance_scale: Classifier-free guidance scale; 1 disables the unconditional branch.
        batch_size: Images per pipeline call.
        conditioning_size: SDXL's original/target size conditioning (the training run's); unset: ``size``.
    """
    told = conditioning_size or size
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    unet_dtype = next(pipe.unet.parameters()).dtype
    device = next(pipe.unet.parameters()).device
    # The pipeline decodes a call's latents in one VAE call; past the VAE's pixel budget (960 px: one image)
    # diffusers' slicing decodes them one at a time (measured 7% slower on a CPU).
    slicing = images_per_vae_call(size, batch_size) < min(batch_size, len(prompts))
    was_slicing = pipe.vae.use_slicing
    pipe.vae.use_slicing = was_slicing or slicing
    try:
        images = []
        for start in range(0, len(prompts), batch_size):
            chunk, chunk_seeds = prompts[start : start + batch_size], seeds[start : start + batch_size]
            positive = encode(chunk).to(dtype=unet_dtype)
            negative = encode([negative_prompt] * len(chunk)).to(dtype=unet_dtype)
            kwargs = {"prompt_embeds": positive.sequence, "negative_prompt_embeds": negative.sequence}
            if positive.pooled is not None:
                kwargs |= {
                    "pooled_prompt_embeds": positive.pooled,
                    "negative_pooled_prompt_embeds": negative.pooled,
                    "original_size": (told, told),
                    "target_size": (told, told),
                }
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in chunk_seeds]
            # Mixed precision only where the frozen weights are in half precision (CUDA); the VAE stays fp32.
            autocast = torch.autocast(device.type, dtype=unet_dtype, enabled=unet_dtype != torch.float32)
            with autocast:
                out = pipe(
                    height=size,
                    width=size,
                    num_inference_steps=steps,
                    guidance_scale=guidance_scale,
                    generator=generators,
                    output_type="pt",
                    **kwargs,
                ).images  # (b, 3, size, size) floats in [0, 1]
            images.append((out.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    finally:
        pipe.vae.use_slicing = was_slicing
    return torch.cat(images)
