"""kohya sd-scripts' LoRA module names: diffusers / transformers module paths <-> ``lora_unet_...`` names.

A kohya name is a prefix plus the module's path in the model kohya trains, with dots turned to underscores:

* SD 1.5 UNet: kohya trains a UNet with diffusers' module paths, so the name is the diffusers path:
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` ->
  ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``.
* SDXL UNet: kohya trains the original SGM/LDM UNet, whose blocks are numbered differently
  (``input_blocks.N.M``, ``middle_block.M``, ``output_blocks.N.M``) and whose ResNet layers have other names
  (``conv1`` is ``in_layers.2``, ``time_emb_proj`` is ``emb_layers.1``, ``conv2`` is ``out_layers.3``,
  ``conv_shortcut`` is ``skip_connection``, a downsampler's ``conv`` is ``op``). The block numbering is
  derived from the UNet's config (:func:`sgm_block_paths`), so it holds for any layout, tiny models included.
* Text encoders: ``lora_te_`` (SD 1.5), ``lora_te1_`` / ``lora_te2_`` (SDXL), then the CLIP path with its
  ``text_model.`` prefix: ``lora_te1_text_model_encoder_layers_0_self_attn_q_proj``. transformers 5 dropped
  that prefix from ``CLIPTextModel``'s own module paths; kohya's names (and every loader) keep it.

Everything here works on names and configs only; no tensors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

TEXT_ENCODER_PREFIXES = {
    "sd15": {"text_encoder": "lora_te"},
    "sdxl": {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"},
}
UNET_PREFIX = "lora_unet"
CLIP_ROOT = "text_model."

# SGM names of a diffusers ResNet's layers, and of the sampler convolutions.
RESNET_TO_SGM = {
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
DOWNSAMPLER_TO_SGM = {"conv": "op"}
# UNet layers outside the down/mid/up blocks (not LoRA targets here, but other tools' files may have them).
TOP_LEVEL_TO_SGM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_out": "out.2",
}
_BLOCK = re.compile(
    r"^((?:down_blocks\.\d+\.(?:resnets|attentions|downsamplers)"
    r"|mid_block\.(?:resnets|attentions)"
    r"|up_blocks\.\d+\.(?:resnets|attentions|upsamplers))\.\d+)\.(.+)$"
)


def _per_block(value: int | Iterable[int], count: int) -> list[int]:
    return [int(value)] * count if isinstance(value, int) else [int(v) for v in value]


def sgm_block_paths(unet_config: Mapping) -> dict[str, str]:
    """diffusers UNet block paths -> SGM block paths, from a ``UNet2DConditionModel`` config.

    SGM numbers the encoder's blocks in order: ``input_blocks.0`` is ``conv_in``, then each level's ResNets
    (each with its attention at index 1) and, except on the last level, its downsampler. The decoder's
    ``output_blocks`` hold each up level's ResNets (one more than the encoder's), the attention at index 1
    and, on the level's last block, the upsampler after them. For real SDXL:
    ``down_blocks.1.attentions.0`` -> ``input_blocks.4.1``, ``mid_block.resnets.1`` -> ``middle_block.2``,
    ``up_blocks.0.upsamplers.0`` -> ``output_blocks.2.2``.
    """
    down_types = list(unet_config["down_block_types"])
    up_types = list(unet_config["up_block_types"])
    layers = _per_block(unet_config["layers_per_block"], len(down_types))
    paths: dict[str, str] = {}
    index = 1
    for level, kind in enumerate(down_types):
        for j in range(layers[level]):
            paths[f"down_blocks.{level}.resnets.{j}"] = f"input_blocks.{index}.0"
            if "CrossAttn" in kind:
                paths[f"down_blocks.{level}.attentions.{j}"] = f"input_blocks.{index}.1"
            index += 1
        if level < len(down_types) - 1:
            paths[f"down_blocks.{level}.downsamplers.0"] = f"input_blocks.{index}.0"
            index += 1
    paths["mid_block.resnets.0"] = "middle_block.0"
    if "CrossAttn" in str(unet_config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"):
        paths["mid_block.attentions.0"] = "middle_block.1"
        paths["mid_block.resnets.1"] = "middle_block.2"
    else:
        paths["mid_block.resnets.1"] = "middle_block.1"
    index = 0
    for level, kind in enumerate(up_types):
        count = list(reversed(layers))[level] + 1
        attention = "CrossAttn" in kind
        for j in range(count):
            paths[f"up_blocks.{level}.resnets.{j}"] = f"output_blocks.{index}.0"
            if attention:
                paths[f"up_blocks.{level}.attentions.{j}"] = f"output_blocks.{index}.1"
            if j == count - 1 and level < len(up_types) - 1:
                paths[f"up_blocks.{level}.upsamplers.0"] = f"output_blocks.{index}.{2 if attention else 1}"
            index += 1
    return paths


def sgm_module_path(module_path: str, block_paths: Mapping[str, str]) -> str | None:
    """A diffusers UNet module path in SGM naming; None when the layout has no such block.

    ``down_blocks.1.resnets.0.time_emb_proj`` -> ``input_blocks.4.0.emb_layers.1`` (real SDXL).
    """
    if module_path in TOP_LEVEL_TO_SGM:
        return TOP_LEVEL_TO_SGM[module_path]
    match = _BLOCK.match(module_path)
    if match is None or match.group(1) not in block_paths:
        return None
    block, rest = match.groups()
    if ".resnets." in block:
        rest = RESNET_TO_SGM.get(rest, rest)
    elif ".downsamplers." in block:
        rest = DOWNSAMPLER_TO_SGM.get(rest, rest)
    return f"{block_paths[block]}.{rest}"


def unet_name(module_path: str, family: str, block_paths: Mapping[str, str] | None = None) -> str:
    """The kohya name of a UNet module: SGM naming for SDXL (needs ``block_paths``), diffusers for SD 1.5."""
    path = module_path
    if family == "sdxl":
        if block_paths is None:
            raise ValueError("SDXL UNet names need the block paths from sgm_block_paths(unet.config)")
        path = sgm_module_path(module_path, block_paths)
        if path is None:
            raise ValueError(f"UNet module {module_path!r} has no SGM name in this layout")
    return f"{UNET_PREFIX}_{path.replace('.', '_')}"


def text_encoder_name(component: str, module_path: str, family: str) -> str:
    """The kohya name of a text-encoder module (``text_model.`` prefix added when the path lacks it)."""
    try:
        prefix = TEXT_ENCODER_PREFIXES[family][component]
    except KeyError:
        raise ValueError(f"{family} has no text encoder component {component!r}") from None
    path = module_path if module_path.startswith(CLIP_ROOT) else CLIP_ROOT + module_path
    return f"{prefix}_{path.replace('.', '_')}"


def kohya_name(
    component: str, module_path: str, family: str, block_paths: Mapping[str, str] | None = None
) -> str:
    """The kohya name of a module of ``unet``, ``text_encoder`` or ``text_encoder_2``."""
    if component == "unet":
        return unet_name(module_path, family, block_paths)
    return text_encoder_name(component, module_path, family)


def accepted_names(
    component: str, module_path: str, family: str, block_paths: Mapping[str, str] | None = None
) -> list[str]:
    """Every kohya-style name under which other tools write this module, ours first.

    UNet: SGM naming and diffusers naming (ComfyUI accepts both for either family). Text encoders: with and
    without the ``text_model_`` root.
    """
    if component != "unet":
        bare = module_path.removeprefix(CLIP_ROOT)
        prefix = TEXT_ENCODER_PREFIXES[family][component]
        return [text_encoder_name(component, bare, family), f"{prefix}_{bare.replace('.', '_')}"]
    names = [f"{UNET_PREFIX}_{module_path.replace('.', '_')}"]
    sgm = sgm_module_path(module_path, block_paths) if block_paths is not None else None
    if sgm is not None:
        names.insert(0 if family == "sdxl" else 1, f"{UNET_PREFIX}_{sgm.replace('.', '_')}")
    return names


def diffusers_path(component: str, module_path: str) -> str:
    """A module's key stem in diffusers' LoRA format; text encoders keep the ``text_model.`` root.

    diffusers strips that root again when the loaded encoder lacks it (transformers 5), and older
    transformers need it, so the file works with both.
    """
    if component != "unet" and not module_path.startswith(CLIP_ROOT):
        module_path = CLIP_ROOT + module_path
    return f"{component}.{module_path}"
