"""``Bespoke PL Snap``: after "VAE Decode", the decoded IMAGE and a LoRA file in, the exact art and an
upscaled preview out, by the same function as ``python -m bespoke_pl snap`` (the same pixels).

ComfyUI is no dependency: its ``folder_paths`` (the list of files in ``models/loras``) is used only where it
can be imported; anywhere else the LoRA is a path. IMAGE tensors are ComfyUI's (B, H, W, C) floats in 0-1.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bespoke_pl.commands.snap_inputs import read_palette
from bespoke_pl.pixelart.find_grid import NoGridError
from bespoke_pl.pixelart.grid import upscale_nearest
from bespoke_pl.pixelart.snap import snap_image

try:  # only inside ComfyUI
    import folder_paths
except ImportError:
    folder_paths = None


def lora_choices() -> list[str]:
    """The LoRA files ComfyUI lists (its ``models/loras``); empty outside ComfyUI."""
    return list(folder_paths.get_filename_list("loras")) if folder_paths is not None else []


def resolve_lora(name: str) -> str:
    """A name from ComfyUI's LoRA list, or a path, -> the file's path."""
    if folder_paths is not None and not Path(name).expanduser().is_file():
        return folder_paths.get_full_path("loras", name) or name
    return name


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) floats 0-1 -> uint8 (B, 3, H, W), rounded (``LoadImage`` divides by 255)."""
    return (images[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 3, 1, 2)


def to_image(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> ComfyUI IMAGE (B, H, W, 3) float32 0-1."""
    return images.permute(0, 2, 3, 1).float() / 255


class BespokeSnap:
    """Snap decoded images to the 24x24 art of a bespoke_pl LoRA, locked to its training palette."""

    CATEGORY = "image/pixel art"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("art", "preview")
    FUNCTION = "snap"
    DESCRIPTION = __doc__

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # noqa: N802 (ComfyUI's name)
        choices = lora_choices()
        lora = (choices,) if choices else ("STRING", {"default": "", "multiline": False})
        return {
            "required": {
                "image": ("IMAGE",),
                "lora_name": lora,
                "preview_scale": ("INT", {"default": 8, "min": 1, "max": 64}),
            },
            "optional": {
                # 0: find it; otherwise image pixels per art pixel (a hint, the phase is still found)
                "pixel_scale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 256.0, "step": 0.01}),
            },
        }

    def snap(
        self, image: torch.Tensor, lora_name: str, preview_scale: int = 8, pixel_scale: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args as :func:`bespoke_pl.commands.snap.snap_images`; ``image`` a ComfyUI IMAGE batch.

        Raises:
            ValueError: No palette in the LoRA, or an image without a grid (which one, what was measured).
        """
        palette, side = read_palette("--lora", resolve_lora(lora_name))
        arts = []
        for i, picture in enumerate(to_uint8(image)):
            try:
                arts.append(snap_image(picture, palette, (side, side), pixel_scale or None).art)
            except NoGridError as error:
                raise ValueError(f"image {i} of the batch: {error}") from error
        art = torch.stack(arts)
        return to_image(art), to_image(upscale_nearest(art, preview_scale))


NODE_CLASS_MAPPINGS = {"BespokePLSnap": BespokeSnap}
NODE_DISPLAY_NAME_MAPPINGS = {"BespokePLSnap": "Bespoke PL Snap (exact pixel art)"}
