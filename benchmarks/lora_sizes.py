"""Sizes of kohya-format LoRA files for the real SDXL and SD 1.5 architectures, from meta-device models.

    python -m benchmarks.lora_sizes            # from the repository root; no weights, no network

The UNets and text encoders are built on the meta device from their published configs (``bespoke_pl.offline.architectures``,
shared with tests/test_kohya.py), default LoRA targets are added, and the file is serialized for real: float16 matrices
of the right shapes (zeros), float32 alphas, kohya names, so the byte counts include the safetensors header.
"UNet+TE" uses the text-encoder layers bespoke_pl trains at the family's usual clip skip (SDXL 2: encoder 1's
last layer is unused and skipped); "all TE layers" is kohya's selection.
"""

from __future__ import annotations

import torch
from safetensors.torch import save

from bespoke_pl.lora.files import kohya_tensors
from bespoke_pl.lora.inject import add_lora, lora_weights, text_encoder_targets, unet_targets
from bespoke_pl.offline.architectures import real_text_encoders, real_unet

CLIP_SKIP = {"sd15": 1, "sdxl": 2}


def build(family: str, rank: int, trained_layers: bool) -> dict:
    """LoRA weights (zeros, float16) per component of the real architecture at ``rank``."""
    with torch.device("meta"):
        unet = real_unet(family)
        encoders = real_text_encoders(family)
        add_lora(unet, unet_targets(unet)[0], rank, rank)
        for i, encoder in enumerate(encoders.values()):
            used = None
            if trained_layers and not (
                family == "sdxl" and i == 1
            ):  # SDXL encoder 2 pools from its last layer
                used = encoder.config.num_hidden_layers - CLIP_SKIP[family] + 1
            add_lora(encoder, text_encoder_targets(encoder, used), rank, rank)
    parts = {"unet": lora_weights(unet)} | {name: lora_weights(e) for name, e in encoders.items()}
    for modules in parts.values():
        for weights in modules.values():
            weights.down = torch.zeros(weights.down.shape, dtype=torch.float16)
            weights.up = torch.zeros(weights.up.shape, dtype=torch.float16)
    return {"parts": parts, "config": unet.config}


def file_bytes(parts: dict, family: str, config) -> tuple[int, int, int]:
    """(modules, parameters, bytes of the serialized kohya file in float16)."""
    tensors = kohya_tensors(parts, family, config, torch.float16)
    parameters = sum(t.numel() for k, t in tensors.items() if not k.endswith(".alpha"))
    return sum(len(m) for m in parts.values()), parameters, len(save(tensors, {"format": "pt"}))


def main() -> None:
    print("| family | rank | part | modules | parameters | file (fp16) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for family in ("sdxl", "sd15"):
        for rank in (16, 32):
            trained, everything = build(family, rank, True), build(family, rank, False)
            rows = {
                "UNet only": {"unet": trained["parts"]["unet"]},
                "UNet+TE": trained["parts"],
                "UNet+TE, all TE layers": everything["parts"],
            }
            for part, parts in rows.items():
                modules, parameters, size = file_bytes(parts, family, trained["config"])
                print(
                    f"| {family} | {rank} | {part} | {modules} | {parameters / 1e6:.1f}M | "
                    f"{size / 1e6:.1f} MB ({size / 2**20:.1f} MiB) |"
                )


if __name__ == "__main__":
    main()
