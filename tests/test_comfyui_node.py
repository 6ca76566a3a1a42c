"""The ComfyUI node, driven as ComfyUI drives one: its INPUT_TYPES, RETURN_TYPES and FUNCTION, on IMAGE
tensors of ComfyUI's layout (B, H, W, C floats 0-1), giving the pixels the ``snap`` command gives."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_snap import lora_with_palette, read_png, save_png

import bespoke_pl.comfyui as package
from bespoke_pl.commands.cli import main
from bespoke_pl.data.demo import demo_traits, draw_punk
from bespoke_pl.pixelart.degrade import degrade
from bespoke_pl.pixelart.palette import palette_of


def load_image(path) -> torch.Tensor:
    """What ComfyUI's LoadImage returns: (1, H, W, 3) float32 = uint8 / 255."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB")).astype(np.float32) / 255.0)[None]


def test_node_gives_the_pixels_of_the_snap_command(tmp_path):
    art = torch.stack(
        [torch.from_numpy(np.array(draw_punk(demo_traits(i), "neon"))).permute(2, 0, 1) for i in range(2)]
    )
    lora = lora_with_palette(tmp_path / "demo.safetensors", palette_of(art))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, name in enumerate(("1024 px blur+jpeg", "noise")):
        save_png(degrade(art[i : i + 1], name)[0], inputs / f"{i}.png")
    main(["snap", str(inputs), "--out", str(tmp_path / "out"), "--lora", lora])

    node_class = package.NODE_CLASS_MAPPINGS["BespokePLSnap"]
    assert "BespokePLSnap" in package.NODE_DISPLAY_NAME_MAPPINGS
    spec = node_class.INPUT_TYPES()
    assert spec["required"]["image"] == ("IMAGE",) and node_class.RETURN_TYPES == ("IMAGE", "IMAGE")
    # ComfyUI fills every required input, the optional ones at their defaults, and calls FUNCTION.
    defaults = {name: options[1]["default"] for name, options in spec["optional"].items()}
    for i in range(2):
        image = load_image(inputs / f"{i}.png")
        values = {"image": image, "lora_name": lora, "preview_scale": 8, **defaults}
        art_out, preview = getattr(node_class(), node_class.FUNCTION)(**values)
        assert art_out.shape == (1, 24, 24, 3) and preview.shape == (1, 192, 192, 3)
        assert art_out.dtype == torch.float32 and art_out.min() >= 0 and art_out.max() <= 1
        command_art = read_png(tmp_path / "out" / f"{i}.png")
        assert torch.equal((art_out[0] * 255).round().byte().permute(2, 0, 1), command_art)
        assert torch.equal(command_art, art[i])


def test_node_refuses_a_lora_without_palette_and_an_image_without_grid(tmp_path):
    node = package.NODE_CLASS_MAPPINGS["BespokePLSnap"]()
    noise = torch.rand(1, 200, 200, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="records no training palette"):
        node.snap(noise, lora_with_palette(tmp_path / "kohya.safetensors", None))
    palette = torch.tensor([[0, 0, 0], [255, 255, 255]], dtype=torch.uint8)
    with pytest.raises(ValueError, match="image 0 of the batch: no pixel grid found"):
        node.snap(noise, lora_with_palette(tmp_path / "ours.safetensors", palette))
