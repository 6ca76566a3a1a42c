"""LoRA (or LoHa / LoKr) on the UNet and text encoders with peft: kohya's default targets, and the trainable
bookkeeping.

Targets follow kohya sd-scripts (``networks/lora.py``) so a file trained here matches what users expect:

* UNet: every ``nn.Linear`` and 1x1 ``nn.Conv2d`` inside a ``Transformer2DModel`` (attention q/k/v/out,
  feed-forward, ``proj_in``/``proj_out``); with ``conv_rank`` (kohya's ``conv_dim``), also every layer of the
  ResNet blocks and the down/up-samplers: the 3x3 convolutions at ``conv_rank``, and the ResNets'
  ``time_emb_proj`` (Linear) and 1x1 ``conv_shortcut`` at the main rank, as kohya does.
* Text encoders: the Linear layers of each CLIP layer's attention and MLP.

On the real architectures this gives kohya's counts (measured with sd-scripts' own ``networks/lora.py``, each
network built in a fresh process): SD 1.5 UNet 192 modules, 278 with ``conv_rank``; SDXL UNet 722, 788 with
``conv_rank``. (sd-scripts extends its target list in place, so an SDXL network built after a ``conv_dim`` one
in the same process picks up the ResNet Linear/1x1 layers too and counts 750; ``train_network.py`` never does.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from torch import nn

from bespoke_pl.lora.lycoris import LoHaWeights, LoKrWeights, dora_scale, peft_loha, peft_lokr

UNET_ATTENTION_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_BLOCKS = ("CLIPAttention", "CLIPMLP", "CLIPSdpaAttention", "CLIPFlashAttention2")
NETWORKS = ("lora", "loha", "lokr")
# peft's parameter name prefixes of each network: what is trained, what checkpoints keep
TRAINABLE_MARKERS = ("lora_", "hada_", "lokr_")


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
    """Module names for UNet LoRA: (targets at the main rank, 3x3 conv targets at ``conv_rank``).

    Args:
        unet: A diffusers ``UNet2DConditionModel``.
        include_conv: Also target the ResNet blocks and samplers (kohya's ``conv_dim``): their Linear and 1x1
            layers join the main-rank list, their larger kernels form the second list.
    """
    linear = [name for name, m in _children_of(unet, UNET_ATTENTION_BLOCKS) if _is_1x1(m)]
    conv: list[str] = []
    if include_conv:
        for name, module in _children_of(unet, UNET_CONV_BLOCKS):
            if name in linear:
                continue
            (linear if _is_1x1(module) else conv).append(name)
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


def _config(
    network: str, rank: int, alpha: float, dropout: float, use_dora: bool, lokr_factor: int, **common
):
    if network == "lora":
        return LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            use_dora=use_dora,
            init_lora_weights=True,
            **common,
        )
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    if use_dora or dropout:
        # peft's LoHa/LoKr have neither DoRA nor dropout on the layer's input (only rank/module dropout).
        raise ValueError(f"{network} takes neither use_dora nor lora_dropout; they apply to network lora")
    if network == "loha":
        return LoHaConfig(r=rank, alpha=alpha, **common)
    return LoKrConfig(r=rank, alpha=alpha, decompose_factor=lokr_factor, **common)


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
    network: str = "lora",
    lokr_factor: int = -1,
) -> nn.Module:
    """Freeze ``model`` and inject LoRA, LoHa or LoKr layers (adapter ``default``) into the named modules.

    Each starts with a zero update (peft's default init: LoRA's up-projection, LoHa's ``hada_w2_b``, LoKr's
    ``lokr_w1`` are zero), so the model's output is unchanged until training moves them. The scale of each
    update is ``alpha / rank``. ``lokr_factor`` is LyCORIS' ``factor`` (peft's ``decompose_factor``): the
    size of LoKr's small Kronecker factor, -1 for one near the square root of the layer's sizes.
    """
    model.requires_grad_(False)
    conv_targets = conv_targets or []
    if not targets and not conv_targets:
        raise ValueError(f"no LoRA target modules found in {type(model).__name__}")
    # peft matches an exact name or a dotted suffix; per-module patterns give convs their own rank.
    rank_pattern = {f"^{re.escape(n)}$": conv_rank for n in conv_targets} if conv_rank else {}
    alpha_pattern = {f"^{re.escape(n)}$": conv_alpha or conv_rank for n in conv_targets} if conv_rank else {}
    config = _config(
        network,
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        use_dora=use_dora,
        lokr_factor=lokr_factor,
        target_modules=targets + conv_targets,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(marker in name for marker in TRAINABLE_MARKERS))
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters of a model: LoRA's A, B (and DoRA's magnitudes), LoHa's ``hada_*``,
    LoKr's ``lokr_*``."""
    return [
        p
        for name, p in model.named_parameters()
        if p.requires_grad and any(m in name for m in TRAINABLE_MARKERS)
    ]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights in peft naming (``<module>.lora_A.weight`` ...), detached."""
    return {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}


@dataclass
class LoRAWeights:
    """One layer's LoRA, in the layout kohya and peft share.

    ``down`` is (r, in) for a Linear and (r, in, kh, kw) for a convolution; ``up`` is (out, r) or
    (out, r, 1, 1). The update to the layer's weight is ``alpha / r * up @ down``. ``magnitude`` (out,) is
    DoRA's per-output-row norm of the adapted weight (peft's and LyCORIS' layout); None for plain LoRA.
    ``magnitude_on_input``: it is (in,) instead, one per input channel (older LyCORIS files).
    """

    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    magnitude: torch.Tensor | None = None
    magnitude_on_input: bool = False

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def features(self) -> tuple[int, int]:
        """(inputs per output row, outputs) of the layer the update fits."""
        return self.down[0].numel(), self.up.shape[0]

    def kohya_tensors(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """kohya's ``lora_down.weight``, ``lora_up.weight``, ``alpha`` (float32) and DoRA's ``dora_scale``."""
        tensors = {
            "lora_down.weight": self.down.to(dtype),
            "lora_up.weight": self.up.to(dtype),
            # float32 whatever the weights' dtype: an alpha like 0.3 survives exactly (loaders call .item()).
            "alpha": torch.tensor(self.alpha, dtype=torch.float32),
        }
        if self.magnitude is not None:
            if self.magnitude_on_input:
                raise ValueError("only per-output-row DoRA magnitudes (peft's) are written")
            tensors["dora_scale"] = dora_scale(self.magnitude, self.down.dim() == 4).to(dtype)
        return tensors

    def delta(self, scale: float = 1.0) -> torch.Tensor:
        """``scale * alpha / r * up @ down`` in float32, shaped (out, in * kh * kw)."""
        product = self.up.float().flatten(1) @ self.down.float().flatten(1)
        return product * (scale * self.alpha / self.rank)


AdapterWeights = LoRAWeights | LoHaWeights | LoKrWeights


def lora_weights(model: nn.Module, adapter: str = "default") -> dict[str, AdapterWeights]:
    """The LoRA / LoHa / LoKr of every adapted layer of a peft-injected model, by the layer's path, detached."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    found: dict[str, AdapterWeights] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoHaLayer) and adapter in module.r:
            found[name] = peft_loha(name, module, adapter)
            continue
        if isinstance(module, LoKrLayer) and adapter in module.r:
            found[name] = peft_lokr(name, module, adapter)
            continue
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        rank, alpha = module.r[adapter], float(module.lora_alpha[adapter])
        if not math.isclose(module.scaling[adapter], alpha / rank, rel_tol=1e-6):
            raise ValueError(f"{name}: LoRA scale is not alpha / rank (rsLoRA?); no file format stores that")
        magnitude = None
        if module.use_dora.get(adapter, False):
            magnitude = module.lora_magnitude_vector[adapter].weight.detach().reshape(-1)
        found[name] = LoRAWeights(
            module.lora_A[adapter].weight.detach(), module.lora_B[adapter].weight.detach(), alpha, magnitude
        )
    return found


def add_text_encoder_lora(
    encoders: list[nn.Module],
    family: str,
    clip_skip: int,
    rank: int,
    alpha: float,
    dropout: float,
    dora: bool,
    network: str = "lora",
    lokr_factor: int = -1,
) -> None:
    """LoRA (or LoHa / LoKr) on the text-encoder layers whose output the UNet sees.

    Clip skip leaves encoder 1's last ``clip_skip - 1`` layers unused, so they get no LoRA (it would train
    nothing and still be saved); SDXL's encoder 2 pools from its last layer, so all of its layers are used.
    """
    for i, encoder in enumerate(encoders):
        pooled = family == "sdxl" and i == 1
        used = None if pooled else encoder.config.num_hidden_layers - clip_skip + 1
        targets = text_encoder_targets(encoder, used)
        add_lora(encoder, targets, rank, alpha, dropout, dora, network=network, lokr_factor=lokr_factor)
