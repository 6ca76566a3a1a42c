"""Test-only: a diffusers SD 1.5 / SDXL folder as an original (LDM / SGM) single-file state dict.

No LDM-format checkpoint exists offline, so the tests build one from the tiny model to exercise
``load_base``'s single-file path (diffusers' ``from_single_file``) on real key names:

* UNet under ``model.diffusion_model.``, in SGM/LDM block numbering (:func:`bespoke_pl.lora.kohya.sgm_block_paths`)
  and LDM ResNet layer names (``in_layers.0`` is ``norm1``, ``out_layers.0`` is ``norm2``, ...).
* VAE under ``first_stage_model.``: ``encoder.down.I.block.J``, ``decoder.up.I.block.J`` with the decoder's
  levels numbered from the bottom (diffusers' ``up_blocks.0`` is LDM's ``up.3``), ``mid.block_1``,
  ``mid.attn_1``; the mid attention's q/k/v/proj_out are 1x1 convolutions there, linears in diffusers.
* Text encoder under ``cond_stage_model.transformer.`` (SDXL: ``conditioner.embedders.0.transformer.``) with HF
  CLIP's ``text_model.`` names (transformers 5's ``CLIPTextModel`` state dicts lack that prefix).
* SDXL's second encoder under ``conditioner.embedders.1.model.`` in OpenCLIP naming: ``transformer.resblocks.N``,
  q/k/v fused into ``attn.in_proj_weight``, ``positional_embedding`` without ``.weight``, ``text_projection``
  transposed.

This is the inverse of what diffusers' ``convert_ldm_*`` / ``convert_open_clip_checkpoint`` read; it is written
from their key names, not from their code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from bespoke_pl.diffusion.base import family_of_folder
from bespoke_pl.lora.kohya import CLIP_ROOT, sgm_block_paths, sgm_module_path

# ResNet and top-level layers that are no LoRA targets, so kohya.py's tables leave them out.
_RESNET_NORMS = {"norm1": "in_layers.0", "norm2": "out_layers.0"}
_UNET_TOP = {"conv_norm_out": "out.0"}
_VAE_TOP = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
# HF CLIP layer names -> OpenCLIP's inside one transformer block (q/k/v are fused separately).
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_VAE_BLOCK = re.compile(r"^(encoder|decoder)\.(down_blocks|up_blocks|mid_block)\.(.+)$")


def _unet_key(key: str, block_paths: Mapping[str, str]) -> str:
    module, param = key.rsplit(".", 1)
    resnet = re.match(r"^(.*\.resnets\.\d+)\.(norm1|norm2)$", module)
    if resnet is not None:
        path = f"{block_paths[resnet.group(1)]}.{_RESNET_NORMS[resnet.group(2)]}"
    else:
        path = _UNET_TOP.get(module) or sgm_module_path(module, block_paths)
    if path is None:
        raise KeyError(f"no LDM name for UNet key {key!r}")
    return f"model.diffusion_model.{path}.{param}"


def _vae_key(key: str, levels: int) -> str:
    match = _VAE_BLOCK.match(key)
    if match is None:  # conv_in, conv_norm_out, conv_out of each side; quant_conv, post_quant_conv
        module, param = key.rsplit(".", 1)
        side, _, layer = module.rpartition(".")
        layer = _VAE_TOP.get(layer, layer)
        return f"first_stage_model.{side + '.' if side else ''}{layer}.{param}"
    side, kind, rest = match.groups()
    rest = rest.replace("conv_shortcut", "nin_shortcut")
    if kind == "mid_block":
        rest = re.sub(r"^resnets\.(\d+)", lambda m: f"block_{int(m.group(1)) + 1}", rest)
        for old, new in _VAE_ATTENTION.items():
            rest = rest.replace(f"attentions.0.{old}.", f"attn_1.{new}.")
        return f"first_stage_model.{side}.mid.{rest}"
    level, rest = rest.split(".", 1)
    if kind == "up_blocks":
        level = str(levels - 1 - int(level))
    rest = re.sub(r"^resnets\.", "block.", rest)
    rest = re.sub(r"^(down|up)samplers\.0\.", lambda m: f"{m.group(1)}sample.", rest)
    return f"first_stage_model.{side}.{'down' if kind == 'down_blocks' else 'up'}.{level}.{rest}"


def _open_clip_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` in OpenCLIP naming: q/k/v fused into ``in_proj``, projection transposed."""
    state = encoder.state_dict()
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": state.pop("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("text_model.embeddings.position_embedding.weight"),
        "text_projection": state.pop("text_projection.weight").T,  # OpenCLIP computes x @ P
    }
    state.pop("text_model.embeddings.position_ids", None)
    for layer in range(encoder.config.num_hidden_layers):
        old, new = f"text_model.encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for param in ("weight", "bias"):
            fused = [state.pop(f"{old}self_attn.{p}_proj.{param}") for p in "qkv"]
            out[f"{new}attn.in_proj_{param}"] = torch.cat(fused)
            for diffusers, openclip in _OPEN_CLIP_LAYER.items():
                out[f"{new}{openclip}.{param}"] = state.pop(f"{old}{diffusers}.{param}")
    for param in ("weight", "bias"):
        out[f"ln_final.{param}"] = state.pop(f"text_model.final_layer_norm.{param}")
    if state:
        raise KeyError(f"no OpenCLIP name for {sorted(state)}")
    return out


def _put(out: dict[str, torch.Tensor], key: str, tensor: torch.Tensor) -> None:
    if key in out:
        raise AssertionError(f"two diffusers tensors map to {key}")
    out[key] = tensor


def ldm_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """The diffusers model in ``folder`` (SD 1.5 or SDXL) as one original-format state dict (float32 copies)."""
    family = family_of_folder(Path(folder))
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    block_paths = sgm_block_paths(unet.config)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in unet.state_dict().items():
        _put(out, _unet_key(key, block_paths), tensor)
    levels = len(vae.config.block_out_channels)
    for key, tensor in vae.state_dict().items():
        name = _vae_key(key, levels)
        if ".mid.attn_1." in name and name.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        _put(out, name, tensor)
    clip_prefix = (
        "cond_stage_model.transformer." if family == "sd15" else "conditioner.embedders.0.transformer."
    )
    for key, tensor in text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue  # a buffer, not a weight; original checkpoints may or may not carry it
        _put(out, clip_prefix + (key if key.startswith(CLIP_ROOT) else CLIP_ROOT + key), tensor)
    if family == "sdxl":
        encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
        for key, tensor in _open_clip_state(encoder_2).items():
            _put(out, f"conditioner.embedders.1.model.{key}", tensor)
    return {key: tensor.detach().contiguous().clone() for key, tensor in out.items()}
