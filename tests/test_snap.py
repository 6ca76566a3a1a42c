"""The one snap: grid finding (non-integer cells, shifted grids), the colour distance near black, the trainer's
path unchanged, and the ``snap`` command on images from elsewhere, bad ones included."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bespoke_pl.commands.cli import main
from bespoke_pl.data.demo import demo_traits, draw_punk
from bespoke_pl.pixelart.colour import LOCK_SPACE, ciede2000, lock_to_palette
from bespoke_pl.pixelart.degrade import degrade, resize_nearest
from bespoke_pl.pixelart.find_grid import NoGridError, find_grid
from bespoke_pl.pixelart.grid import reduce_blocks, upscale_nearest
from bespoke_pl.pixelart.palette import palette_of, palette_to_hex
from bespoke_pl.pixelart.snap import snap_and_lock, snap_image, to_art


@pytest.fixture(scope="module")
def art() -> torch.Tensor:
    return torch.stack(
        [torch.from_numpy(np.array(draw_punk(demo_traits(i), "neon"))).permute(2, 0, 1) for i in range(3)]
    )


def save_png(image: torch.Tensor, path) -> None:
    Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(path)


def read_png(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


def lora_with_palette(path, palette: torch.Tensor | None) -> str:
    """A LoRA file whose header has our palette, or none (as kohya writes them)."""
    metadata = {"ss_network_module": "networks.lora"}
    if palette is not None:
        metadata |= {"bespoke_pl.palette": json.dumps(palette_to_hex(palette)), "bespoke_pl.resolution": "24"}
    tensors = {
        "lora_unet_a.lora_down.weight": torch.zeros(4, 8),
        "lora_unet_a.lora_up.weight": torch.zeros(8, 4),
    }
    save_file(tensors, str(path), metadata)
    return str(path)


def test_noise_lifted_black_locks_to_black_not_brown():
    palette = torch.tensor([[0, 0, 0], [28, 26, 0], [200, 180, 150]], dtype=torch.uint8)
    lifted = torch.tensor([8, 8, 8], dtype=torch.uint8).view(1, 3, 1, 1)
    assert lock_to_palette(lifted, palette, LOCK_SPACE).flatten().tolist() == [0, 0, 0]
    assert lock_to_palette(lifted, palette, "oklab").flatten().tolist() == [28, 26, 0]  # the old mistake


def test_ciede2000_matches_sharma_reference_pairs():
    lab1 = torch.tensor([[50.0, 2.6772, -79.7751], [50.0, 2.5, 0.0], [60.2574, -34.0099, 36.2677]])
    lab2 = torch.tensor([[50.0, 0.0, -82.7485], [73.0, 25.0, -18.0], [60.4626, -34.1751, 39.4387]])
    assert torch.allclose(ciede2000(lab1, lab2), torch.tensor([2.0425, 27.1492, 1.2644]), atol=1e-3)


@pytest.mark.parametrize(
    ("name", "cell", "start"), [("1000 px", 1000 / 24, 0.0), ("shifted (3, 5) px", 16, 3.0)]
)
def test_finds_non_integer_and_shifted_grids(art, name, cell, start):
    grid = find_grid(degrade(art[:1], name)[0])
    assert abs(grid.cell[0] - cell) < 0.1 and abs(grid.start[0] - start) < 0.6


def test_refuses_an_image_without_a_grid():
    noise = torch.randint(
        0, 256, (3, 300, 300), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    with pytest.raises(NoGridError, match="no pixel grid found: best fit cell .* edges 1.0"):
        find_grid(noise)


def test_the_trainers_exact_grids_reduce_as_before(art):
    raw = degrade(art, "noise")  # k = 16, noise of 12 levels
    palette = palette_of(art)
    snapped, locked = to_art(raw, 16, palette)
    rough = upscale_nearest(art, 8)
    assert torch.equal(to_art(rough, 8)[0], reduce_blocks(rough, 8))  # clean art: the old reduction exactly
    assert torch.equal(locked, art)  # the noise is averaged out (the old tolerance of 10 levels was not)
    assert torch.equal(snap_image(raw[0], palette).art, locked[0])  # the found grid agrees with the known one
    assert snapped.shape == (3, 3, 24, 24)


def test_snap_command_recovers_1024px_art_the_old_code_refused(art, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    palette = palette_of(art)
    big = resize_nearest(art, 1024)
    with pytest.raises(ValueError, match="not a multiple of pixel_scale"):
        snap_and_lock(big, 43, palette)  # today's generate/evaluate path: no grid of 1024 px
    save_png(big[0], inputs / "upscaled.png")
    save_png(degrade(art[1:2], "1024 px blur+jpeg")[0], inputs / "blurred.png")
    save_png(degrade(art[2:3], "shifted (3, 5) px")[0], inputs / "shifted.png")
    lora = lora_with_palette(tmp_path / "demo.safetensors", palette)
    main(["snap", str(inputs), "--out", str(tmp_path / "out"), "--lora", lora, "--preview"])
    assert "wrote 3 images" in capsys.readouterr().out
    for name, i in (("upscaled", 0), ("blurred", 1), ("shifted", 2)):
        assert torch.equal(read_png(tmp_path / "out" / f"{name}.png"), art[i])
        assert read_png(tmp_path / "out" / f"{name}-preview.png").shape == (3, 192, 192)


def test_bad_inputs_get_one_line_each_and_the_others_go_through(art, tmp_path, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    save_png(upscale_nearest(art[:1], 8)[0], inputs / "good.png")
    (inputs / "empty.png").write_bytes(b"")
    frames = [Image.new("RGB", (48, 48), c) for c in ("red", "blue")]
    frames[0].save(inputs / "animated.png", save_all=True, append_images=frames[1:])
    Image.fromarray(np.zeros((48, 48), dtype=np.uint16)).save(inputs / "deep.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(
        inputs / "noise.png"
    )
    save_png(upscale_nearest(art[:1], 8)[0], inputs / "good-preview.png")  # a preview mixed into the art
    out.mkdir()
    (out / "taken.png").write_bytes(b"the user's file")
    save_png(upscale_nearest(art[1:2], 8)[0], inputs / "taken.png")
    palette_file = tmp_path / "palette.txt"
    palette_file.write_text("\n".join(palette_to_hex(palette_of(art))))
    main(["snap", str(inputs), "--out", str(out), "--palette", str(palette_file)])
    lines = capsys.readouterr().out.splitlines()
    expected = {
        "empty.png": "empty (0 bytes)",
        "animated.png": "an animation of 2 frames",
        "deep.png": "16-bit PNG",
        "noise.png": "no pixel grid found",
        "good-preview.png": "a preview written by snap",
        "taken.png": "exists; nothing is overwritten",
    }
    for name, problem in expected.items():
        assert [line for line in lines if name in line and problem in line], (name, lines)
    assert lines[-1] == f"wrote 1 images to {out}; skipped 6"
    assert torch.equal(read_png(out / "good.png"), art[0])
    assert (out / "taken.png").read_bytes() == b"the user's file"
    assert sorted(p.name for p in out.iterdir()) == ["good.png", "taken.png"]


@pytest.mark.parametrize(
    ("option", "content", "problem"),
    [
        ("--palette", "#000000\n", "has 1 colour"),
        ("--palette", "".join(f"#{i:06x}\n" for i in range(10_000)), "has 10000 colours"),
        ("--lora", None, "records no training palette"),
    ],
    ids=["one colour", "10000 colours", "kohya LoRA"],
)
def test_palettes_that_cannot_work_are_refused_naming_the_file(
    art, tmp_path, capsys, option, content, problem
):
    save_png(upscale_nearest(art[:1], 8)[0], tmp_path / "a.png")
    if content is None:
        source = lora_with_palette(tmp_path / "kohya.safetensors", None)
    else:
        source = tmp_path / "palette.txt"
        source.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["snap", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), option, str(source)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(source) in error[0] and problem in error[0]
    assert not (tmp_path / "out").exists()
