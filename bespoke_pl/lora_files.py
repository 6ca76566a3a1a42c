"""LoRA files on disk: safetensors only, written atomically, in diffusers/PEFT naming.

Keys are ``<component>.<module>.lora_A.weight`` / ``lora_B.weight`` with component ``unet``,
``text_encoder`` or ``text_encoder_2``: the layout diffusers' ``load_lora_weights`` reads. The LoRA
configuration of each component (rank, alpha, targets) goes in the header under diffusers'
``lora_adapter_metadata`` key, so loaders apply the real alpha / rank scale.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the user's usual permissions
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def diffusers_tensors(
    parts: dict[str, dict[str, torch.Tensor]], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Prefix each component's peft-named LoRA weights with its component name and cast for saving."""
    return {
        f"{component}.{key}": value.to(dtype) for component, sd in parts.items() for key, value in sd.items()
    }


def diffusers_adapter_metadata(configs: dict[str, dict]) -> str:
    """diffusers' ``lora_adapter_metadata`` JSON: each component's LoraConfig fields, prefixed."""
    flat = {
        f"{component}.{key}": value for component, config in configs.items() for key, value in config.items()
    }
    return json.dumps(flat, sort_keys=True, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
