"""``python -m bespoke_pl generate`` on the demo config's LoRA (tiny SDXL), through the real CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bespoke_pl.commands.cli import main
from bespoke_pl.commands.generate import generate_images, next_index
from bespoke_pl.data.prompts import read_prompts
from bespoke_pl.diffusion.devices import pick_device
from bespoke_pl.lora.loading import LoRAFileError, read_lora_file
from bespoke_pl.lora.metadata import recorded_settings
from bespoke_pl.pixelart.palette import palette_from_hex

PROMPT = "pixel art, 24x24, portrait of bespoke punk, male, blue background"


def pixels(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path)).copy())


def test_generate_writes_art_and_never_overwrites(tmp_path, trained_sdxl):
    out = tmp_path / "generated"
    common = ["--base_model", str(trained_sdxl.tiny), "--lora", str(trained_sdxl.files["kohya"]), "--steps", "2",
              "--out", str(out), "--device", "cpu"]  # fmt: skip
    main(["generate", *common, "--prompt", PROMPT, "--num_images", "2"])
    first = ["0000-seed42.png", "0001-seed43.png"]
    raws = ["0000-seed42-raw.png", "0001-seed43-raw.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*first, *raws, "0000-sheet.png", "0000-generate.json"]
    )
    palette = {
        tuple(c)
        for c in palette_from_hex(
            recorded_settings(read_lora_file(trained_sdxl.files["kohya"]).metadata).palette
        ).tolist()
    }
    for name, raw in zip(first, raws, strict=True):
        image = Image.open(out / name)
        assert (image.size, image.mode) == ((24, 24), "RGB")
        assert Image.open(out / raw).size == (192, 192)
        # locked to the training palette recorded in the file
        assert {tuple(c) for c in pixels(out / name).reshape(-1, 3).tolist()} <= palette
    assert Image.open(out / "0000-sheet.png").size == (2 + 2 * (24 * 8 + 2), 2 + 24 * 8 + 2)
    record = json.loads((out / "0000-generate.json").read_text())
    assert (record["clip_skip"], record["pixel_scale"], record["palette_lock"]) == (
        2,
        8,
        True,
    )  # from the header
    assert [i["seed"] for i in record["images"]] == [42, 43] and record["images"][0]["prompt"] == PROMPT
    stamps = {p.name: p.read_bytes() for p in out.iterdir()}

    # a prompts file, one image each, a clip-skip override: numbered after the first run, nothing rewritten
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# a comment\n{PROMPT}\n\npixel art, 24x24, portrait of bespoke punk, female\n")
    main(["generate", *common, "--prompts_file", str(prompts), "--num_images", "1", "--clip_skip", "1"])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in stamps} == stamps
    assert {"0002-seed42.png", "0003-seed43.png", "0002-sheet.png", "0002-generate.json"} <= {
        p.name for p in out.iterdir()
    }
    record = json.loads((out / "0002-generate.json").read_text())
    assert record["clip_skip"] == 1 and len(record["images"]) == 2
    same_seed_other_clip_skip = pixels(out / "0000-seed42.png"), pixels(out / "0002-seed42.png")
    assert not torch.equal(*same_seed_other_clip_skip)


def test_generate_refuses_bad_lora_files_with_clear_errors(tmp_path, tiny_sd15, trained_sdxl):
    pickle = tmp_path / "punk.safetensors"
    torch.save({"lora_unet_a.lora_down.weight": torch.zeros(1)}, pickle)
    cases = [
        (tiny_sd15, trained_sdxl.files["kohya"], "is a LoRA for SDXL, but base model .*sd15 is SD 1.5"),
        (trained_sdxl.tiny, pickle, "punk.safetensors is a pickle"),
        (
            trained_sdxl.tiny,
            trained_sdxl.tiny / "unet" / "diffusion_pytorch_model.safetensors",
            "is not an SD",
        ),
    ]
    for base, lora, message in cases:  # (the command line's one-line errors: test_command_errors.py)
        with pytest.raises(LoRAFileError, match=message):
            generate_images(str(base), str(lora), prompt="x", out=str(tmp_path))
    assert not list(tmp_path.glob("*.png"))


def test_helpers(tmp_path):
    assert pick_device("cpu").type == "cpu" and pick_device("auto").type in ("cuda", "mps", "cpu")
    with pytest.raises(ValueError, match="tpu"):
        pick_device("tpu")
    with pytest.raises(ValueError, match="give a --prompt"):
        read_prompts(None, None)
    assert next_index(tmp_path) == 0
    (tmp_path / "0041-seed7.png").touch()
    (tmp_path / "notes.txt").touch()
    assert next_index(tmp_path) == 42
