"""LoRA on the UNet and text encoders with peft: kohya's default targets, and the trainable bookkeeping.

Targets follow kohya sd-scripts (``networks/lora.py``) so a file trained here matches what users expect:

* UNet: every ``nn.Linear`` and 1x1 ``nn.Conv2d`` inside a ``Transformer2DModel`` (attention q/k/v/out,
  feed-forward, ``proj_in``/``proj_out``); with ``conv_rank``, also the 3x3 convolutions (and 1x1
  shortcuts) of the ResNet blocks and the down/up-samplers (kohya's ``conv_dim``).
* Text encoders: the Linear layers of each CLIP layer's attention and MLP.
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from torch import nn

UNET_ATTENTION_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_BLOCKS = ("CLIPAttention", "CLIPMLP", "CLIPSdpaAttention", "CLIPFlashAttention2")


def _children_of(model: nn.Module, block_types: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if type(module).__name__ in block_types:
            for child_name, child in module.named_modules():
                if child_name and isinstance(child, nn.Linear | nn.Conv2d):
                    found[f"{name}.{child_name}"] = child
    return list(found.items())


def _is_1x1(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or tuple(module.kernel_size) == (1, 1)


def unet_targets(unet: nn.Module, include_conv: bool = False) -> tuple[list[str], list[str]]:
    """Module names for UNet LoRA: (Linear/1x1 targets in transformer blocks, 3x3 conv targets)."""
    linear = [name for name, m in _children_of(unet, UNET_ATTENTION_BLOCKS) if _is_1x1(m)]
    conv: list[str] = []
    if include_conv:
        for name, module in _children_of(unet, UNET_CONV_BLOCKS):
            if isinstance(module, nn.Conv2d) and name not in linear:
                conv.append(name)
    return linear, conv


def text_encoder_targets(encoder: nn.Module, num_layers: int | None = None) -> list[str]:
    """Module names for text-encoder LoRA: q/k/v/out projections and fc1/fc2 of the CLIP layers.

    Args:
        encoder: A CLIP text model.
        num_layers: Only the first N layers (those that feed the conditioning under clip skip);
            unset: all. LoRA on a layer whose output is never used would only be dead weight.
    """
    names = [name for name, _ in _children_of(encoder, TEXT_ENCODER_BLOCKS)]
    if num_layers is None:
        return names
    return [n for n in names if int(re.search(r"layers\.(\d+)\.", n).group(1)) < num_layers]


def add_lora(
    model: nn.Module,
    targets: list[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    use_dora: bool = False,
    conv_targets: list[str] | None = None,
    conv_rank: int | None = None,
    conv_alpha: float | None = None,
) -> nn.Module:
    """Freeze ``model`` and inject LoRA layers (adapter ``default``) into the named modules.

    Up-projections start at zero (peft's default), so the model's output is unchanged until training moves
    them. The effective scale of each update is ``alpha / rank``.
    """
    model.requires_grad_(False)
    conv_targets = conv_targets or []
    if not targets and not conv_targets:
        raise ValueError(f"no LoRA target modules found in {type(model).__name__}")
    # peft matches an exact name or a dotted suffix; per-module patterns give convs their own rank.
    rank_pattern = {f"^{re.escape(n)}$": conv_rank for n in conv_targets} if conv_rank else {}
    alpha_pattern = {f"^{re.escape(n)}$": conv_alpha or conv_rank for n in conv_targets} if conv_rank else {}
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets + conv_targets,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        use_dora=use_dora,
        init_lora_weights=True,
    )
    inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable LoRA parameters of a model (A, B and, with DoRA, magnitude vectors)."""
    return [p for name, p in model.named_parameters() if "lora_" in name and p.requires_grad]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights in peft naming (``<module>.lora_A.weight`` ...), detached."""
    return {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}


def load_lora_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load peft-named LoRA weights into a model that already has the adapter; unknown keys are an error."""
    result = set_peft_model_state_dict(model, state_dict)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise KeyError(f"LoRA weights do not fit the model: {unexpected[:5]}")


def count_parameters(parameters: list[nn.Parameter]) -> int:
    return sum(p.numel() for p in parameters)
