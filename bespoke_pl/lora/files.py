"""Writing LoRA files: safetensors only, written atomically, in kohya's format (default) or diffusers'.

* ``kohya``: what sd-scripts writes and ComfyUI, A1111/Forge, diffusers and kohya's own scripts load. Per
  layer ``<name>.lora_down.weight``, ``<name>.lora_up.weight`` and ``<name>.alpha`` (the real network alpha,
  a float32 scalar), with names from :mod:`bespoke_pl.lora.kohya`. LyCORIS' keys under the same names hold
  DoRA (``<name>.dora_scale``), LoHa (``hada_*``) and LoKr (``lokr_*``); see :mod:`bespoke_pl.lora.lycoris`.
* ``diffusers``: diffusers/PEFT naming, ``<component>.<module>.lora_A.weight`` / ``lora_B.weight`` with
  component ``unet``, ``text_encoder`` or ``text_encoder_2``, and each component's LoRA configuration (rank,
  alpha, per-layer exceptions, targets) in the header under ``lora_adapter_metadata``, which diffusers'
  ``load_lora_weights`` reads to apply the real ``alpha / rank`` scale. It holds LoRA and DoRA, not
  LoHa / LoKr (diffusers has no format for them).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from bespoke_pl.files import atomic_write
from bespoke_pl.lora.inject import AdapterWeights, LoRAWeights
from bespoke_pl.lora.kohya import CLIP_ROOT, diffusers_path, kohya_name, sgm_block_paths

DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
FORMATS = ("kohya", "diffusers")
# component -> module path -> weights: the LoRA of a whole pipeline, independent of any file format.
LoRAParts = Mapping[str, Mapping[str, AdapterWeights]]


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]
) -> Path:
    """Write a safetensors file via a temporary file in the same folder and an atomic rename.

    A crash or a full disk mid-write leaves any earlier file at ``path`` untouched.
    """
    path = Path(path)
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FloatingPointError(
            f"refusing to write {path.name}: non-finite values in {len(bad)} tensors, e.g. {bad[0]}"
        )
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def kohya_tensors(
    parts: LoRAParts, family: str, unet_config: Mapping | None, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """kohya-named tensors (LyCORIS' keys for DoRA, LoHa and LoKr); ``unet_config`` (the UNet's config)
    numbers SDXL's SGM blocks."""
    blocks = sgm_block_paths(unet_config) if family == "sdxl" and "unet" in parts else None
    tensors: dict[str, torch.Tensor] = {}
    for component, modules in parts.items():
        for path, weights in modules.items():
            name = kohya_name(component, path, family, blocks)
            tensors |= {f"{name}.{key}": t for key, t in weights.kohya_tensors(dtype).items()}
    return tensors


def diffusers_tensors(parts: LoRAParts, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """diffusers/PEFT-named tensors (DoRA magnitudes in peft's shapes).

    Raises:
        ValueError: A layer is LoHa or LoKr, which diffusers' LoRA format cannot hold.
    """
    tensors: dict[str, torch.Tensor] = {}
    for component, modules in parts.items():
        for path, weights in modules.items():
            if not isinstance(weights, LoRAWeights):
                raise ValueError(
                    f"{component} layer {path} is {type(weights).__name__.removesuffix('Weights')}, which "
                    "diffusers' LoRA format cannot hold; save with --save_lora.format kohya"
                )
            stem = diffusers_path(component, path)
            tensors[f"{stem}.lora_A.weight"] = weights.down.to(dtype)
            tensors[f"{stem}.lora_B.weight"] = weights.up.to(dtype)
            if weights.magnitude is not None:
                # peft keeps a convolution's magnitude as (1, out, 1, 1), a Linear's as (out,)
                shape = (1, -1, 1, 1) if weights.down.dim() == 4 else (-1,)
                tensors[f"{stem}.lora_magnitude_vector"] = weights.magnitude.reshape(shape).to(dtype)
    return tensors


def _most_common(values: list) -> object:
    return Counter(values).most_common(1)[0][0]


def adapter_config(component: str, modules: Mapping[str, LoRAWeights]) -> dict:
    """One component's ``LoraConfig`` fields: the usual rank and alpha, and per-layer exceptions.

    Module names are written without the text encoders' ``text_model.`` root: peft matches them as suffixes,
    so they fit encoders with and without it.
    """
    names = {path: path.removeprefix(CLIP_ROOT) for path in modules}
    rank = _most_common([w.rank for w in modules.values()])
    alpha = _most_common([w.alpha for w in modules.values()])
    return {
        "r": rank,
        "lora_alpha": alpha,
        "rank_pattern": {re.escape(names[p]): w.rank for p, w in modules.items() if w.rank != rank},
        "alpha_pattern": {re.escape(names[p]): w.alpha for p, w in modules.items() if w.alpha != alpha},
        "target_modules": sorted(names.values()),
        "use_dora": any(w.magnitude is not None for w in modules.values()),
    }


def diffusers_adapter_metadata(parts: LoRAParts) -> str:
    """diffusers' ``lora_adapter_metadata`` JSON: each component's LoraConfig fields, prefixed."""
    flat = {
        f"{component}.{key}": value
        for component, modules in parts.items()
        if modules
        for key, value in adapter_config(component, modules).items()
    }
    return json.dumps(flat, sort_keys=True)


def save_lora_file(
    path: str | Path,
    parts: LoRAParts,
    family: str,
    unet_config: Mapping | None,
    metadata: dict[str, str],
    lora_format: str = "kohya",
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write a pipeline's LoRA to ``path`` in ``lora_format`` (``kohya`` or ``diffusers``), atomically.

    Args:
        path: The ``.safetensors`` file to write.
        parts: Component -> module path -> :class:`LoRAWeights` (see :func:`bespoke_pl.lora.inject.lora_weights`).
        family: ``sd15`` or ``sdxl``.
        unet_config: The UNet's config (kohya SDXL names need its block layout).
        metadata: Header strings (``ss_*``, ``modelspec.*``, ``bespoke_pl.*``).
        lora_format: ``kohya`` or ``diffusers``.
        dtype: Dtype of the LoRA matrices.
    """
    if lora_format == "kohya":
        tensors = kohya_tensors(parts, family, unet_config, dtype)
        header = dict(metadata)
    elif lora_format == "diffusers":
        tensors = diffusers_tensors(parts, dtype)
        header = {**metadata, DIFFUSERS_METADATA_KEY: diffusers_adapter_metadata(parts)}
    else:
        raise ValueError(f"LoRA format must be one of {FORMATS}, got {lora_format!r}")
    if not tensors:
        raise ValueError(f"refusing to write {path}: the model has no LoRA layers")
    return atomic_save_safetensors(tensors, path, {"format": "pt", **header})
