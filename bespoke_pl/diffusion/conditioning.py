"""Captions -> prompt embeddings, with clip skip in the kohya / A1111 numbering.

One function, :func:`encode_prompts`, serves training and sampling, so the two can never disagree.

Clip skip (``n``, counted from the end, 1 = the last layer), per family:

* SD 1.5 (one CLIP ViT-L, 12 layers): the sequence is the output of layer ``-n`` passed through the
  encoder's final layer norm. ``n = 1`` is the usual ``last_hidden_state``; ``n = 2`` is the penultimate
  layer, then the final layer norm (NovelAI / anime models, A1111's "Clip skip 2").
* SDXL (CLIP ViT-L and OpenCLIP ViT-bigG): the sequence is the output of layer ``-n`` of *both* encoders,
  without the final layer norm, concatenated to (B, 77, 768 + 1280 = 2048). ``n = 2`` is what SDXL was
  trained on and what every SDXL pipeline uses; the pooled vector (B, 1280) is always encoder 2's final
  projected output, whatever ``n``.

diffusers' own ``clip_skip`` argument counts differently: ours is diffusers' + 1 for SD 1.5 (ours 1 =
diffusers ``None``) and diffusers' + 2 for SDXL (ours 2 = diffusers ``None``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PromptEmbeds:
    """Text conditioning for the UNet: a token sequence and, for SDXL, the pooled embedding."""

    sequence: torch.Tensor  # (B, 77, D): D = 768 for SD 1.5, 2048 for SDXL
    pooled: torch.Tensor | None = None  # (B, 1280) for SDXL, None for SD 1.5

    def to(self, *args, **kwargs) -> PromptEmbeds:
        pooled = None if self.pooled is None else self.pooled.to(*args, **kwargs)
        return PromptEmbeds(self.sequence.to(*args, **kwargs), pooled)

    def __getitem__(self, index) -> PromptEmbeds:
        return PromptEmbeds(self.sequence[index], None if self.pooled is None else self.pooled[index])

    @staticmethod
    def cat(items: list[PromptEmbeds]) -> PromptEmbeds:
        pooled = None if items[0].pooled is None else torch.cat([e.pooled for e in items])
        return PromptEmbeds(torch.cat([e.sequence for e in items]), pooled)


def final_layer_norm(encoder: nn.Module) -> nn.Module:
    """The encoder's final LayerNorm (transformers < 5 nest it under ``text_model``)."""
    return getattr(encoder, "text_model", encoder).final_layer_norm


def num_layers(encoder: nn.Module) -> int:
    return encoder.config.num_hidden_layers


def tokenize(tokenizer, captions: list[str], device: torch.device | None = None) -> torch.Tensor:
    """Token ids (B, 77), padded and truncated to the tokenizer's length as every SD pipeline does."""
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids.to(device) if device is not None else ids


def _check_clip_skip(clip_skip: int, encoder: nn.Module) -> None:
    if not 1 <= clip_skip <= num_layers(encoder):
        raise ValueError(f"clip_skip must be between 1 and {num_layers(encoder)}, got {clip_skip}")


def encode_prompts(
    captions: list[str],
    tokenizers: list,
    text_encoders: list[nn.Module],
    clip_skip: int,
) -> PromptEmbeds:
    """Encode captions for the UNet; one encoder means SD 1.5, two mean SDXL (see the module docstring).

    Args:
        captions: B caption strings; an empty string is the unconditional prompt.
        tokenizers: One tokenizer per text encoder, in the base model's order.
        text_encoders: ``[CLIPTextModel]`` (SD 1.5) or ``[CLIPTextModel, CLIPTextModelWithProjection]``.
        clip_skip: 1 = last layer; 2 = penultimate (kohya / A1111 numbering).
    """
    device = next(text_encoders[0].parameters()).device
    if len(text_encoders) == 1:
        (encoder,) = text_encoders
        _check_clip_skip(clip_skip, encoder)
        out = encoder(tokenize(tokenizers[0], captions, device), output_hidden_states=True)
        # hidden_states holds the embeddings plus each layer's output (L + 1 entries), before final LN.
        sequence = final_layer_norm(encoder)(out.hidden_states[-clip_skip])
        return PromptEmbeds(sequence)

    sequences = []
    pooled = None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        _check_clip_skip(clip_skip, encoder)
        ids = tokenize(tokenizer, captions, encoder.device if hasattr(encoder, "device") else device)
        out = encoder(ids, output_hidden_states=True)
        sequences.append(out.hidden_states[-clip_skip])  # SDXL: no final layer norm on the sequence
        if hasattr(out, "text_embeds"):
            pooled = out.text_embeds  # (B, 1280): encoder 2's projected final-layer EOS token
    if pooled is None:
        raise ValueError("SDXL needs its second text encoder with a projection (CLIPTextModelWithProjection)")
    return PromptEmbeds(torch.cat(sequences, dim=-1), pooled)


def sdxl_time_ids(size: int, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """SDXL's micro-conditioning (B, 6): original (h, w), crop (top, left), target (h, w).

    The images are trained at their upscaled size (24 * pixel_scale), uncropped, so original and target are
    both that size; sampling at the same size asks for the same look.
    """
    ids = torch.tensor([size, size, 0, 0, size, size], device=device, dtype=dtype)
    return ids.expand(batch, 6)


def predict_noise(
    unet: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds, image_size: int
) -> torch.Tensor:
    """The UNet's prediction for noisy latents, conditioned as in training: prompt sequence, and for SDXL
    the pooled embedding and the time ids of an uncropped ``image_size`` image. Runs in the UNet's dtype."""
    dtype = unet.dtype
    added = None
    if embeds.pooled is not None:
        time_ids = sdxl_time_ids(image_size, noisy.shape[0], noisy.device, dtype)
        added = {"text_embeds": embeds.pooled.to(dtype), "time_ids": time_ids}
    return unet(
        noisy.to(dtype), timesteps, encoder_hidden_states=embeds.sequence.to(dtype), added_cond_kwargs=added
    ).sample
