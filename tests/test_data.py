from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.data.pairs import load_pairs, parse_colour, shuffle_caption
from bespoke_pl.errors import DatasetError


def write_pair(
    folder: Path, stem: str, pixels: np.ndarray, caption: str | None = "pixel art, 24x24, punk", mode=None
):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(folder / f"{stem}.png")
    if caption is not None:
        (folder / f"{stem}.txt").write_text(caption, encoding="utf-8")


def rgb(seed: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_colours_load_exactly(tmp_path):
    images = [rgb(i) for i in range(3)]
    for i, image in enumerate(images):
        write_pair(tmp_path, f"p{i}", image)
    pairs = load_pairs(tmp_path)
    assert pairs.images.dtype == torch.uint8 and pairs.images.shape == (3, 3, 24, 24)
    for i, image in enumerate(images):
        assert np.array_equal(pairs.images[i].permute(1, 2, 0).numpy(), image)
    assert pairs.captions == ["pixel art, 24x24, punk"] * 3


def test_wrong_sizes_are_refused_all_at_once(tmp_path):
    write_pair(tmp_path, "good", rgb(0))
    write_pair(tmp_path, "big", rgb(1, 48))
    write_pair(tmp_path, "small", rgb(2, 12))
    with pytest.raises(DatasetError) as error:
        load_pairs(tmp_path)
    message = str(error.value)
    assert "not 24x24" in message and "big.png (48x48)" in message and "small.png (12x12)" in message
    assert "good.png" not in message


def test_missing_and_empty_captions_are_refused_unless_defaulted(tmp_path):
    write_pair(tmp_path, "a", rgb(0), caption=None)
    write_pair(tmp_path, "b", rgb(1), caption="   ")
    with pytest.raises(DatasetError) as error:
        load_pairs(tmp_path)
    assert "missing caption" in str(error.value) and "a.txt" in str(error.value)
    assert "empty caption" in str(error.value) and "b.txt" in str(error.value)
    pairs = load_pairs(tmp_path, default_caption="pixel art")
    assert pairs.captions == ["pixel art", "pixel art"]


def test_caption_must_be_utf8(tmp_path):
    write_pair(tmp_path, "a", rgb(0))
    (tmp_path / "a.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DatasetError, match=r"not UTF-8: a\.txt"):
        load_pairs(tmp_path)


def test_transparency_needs_a_background(tmp_path):
    rgba = np.zeros((24, 24, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:12, :, 3] = 255  # top half opaque, bottom half transparent
    write_pair(tmp_path, "ghost", rgba, mode="RGBA")
    with pytest.raises(DatasetError, match=r"transparent but no `background`.*ghost\.png"):
        load_pairs(tmp_path)
    pairs = load_pairs(tmp_path, background="#102030")
    image = pairs.images[0]
    assert image[:, 0, 0].tolist() == [200, 200, 200]
    assert image[:, 23, 0].tolist() == [16, 32, 48]


def test_opaque_rgba_palette_and_grey_images_are_accepted(tmp_path):
    opaque = np.dstack([rgb(0), np.full((24, 24), 255, np.uint8)])
    write_pair(tmp_path, "rgba", opaque, mode="RGBA")
    Image.fromarray(rgb(1)).quantize(16).save(tmp_path / "pal.png")
    (tmp_path / "pal.txt").write_text("x")
    Image.fromarray(rgb(2)[..., 0], "L").save(tmp_path / "grey.png")
    (tmp_path / "grey.txt").write_text("x")
    pairs = load_pairs(tmp_path)
    assert len(pairs.captions) == 3
    assert np.array_equal(
        pairs.images[2].permute(1, 2, 0).numpy(), opaque[..., :3]
    )  # sorted: grey, pal, rgba


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_pairs(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no .png images"):
        load_pairs(tmp_path)


def test_parse_colour():
    assert parse_colour("#ff8000") == (255, 128, 0)
    assert parse_colour("1, 2, 3") == (1, 2, 3)
    with pytest.raises(ValueError, match="background colour"):
        parse_colour("#12345")


def test_shuffle_keeps_leading_tags():
    caption = "pixel art, 24x24, a, b, c, d, e"
    generator = torch.Generator().manual_seed(0)
    shuffled = {shuffle_caption(caption, 2, generator) for _ in range(20)}
    assert all(s.startswith("pixel art, 24x24, ") for s in shuffled)
    assert len(shuffled) > 1
    assert all(sorted(s.split(", ")) == sorted(caption.split(", ")) for s in shuffled)


def test_datamodule_repeats_dropout_and_batches(tmp_path):
    for i in range(4):
        write_pair(tmp_path, f"p{i}", rgb(i), caption=f"pixel art, tag{i}")
    dm = PixelArtDataModule(str(tmp_path), batch_size=3, num_repeats=2, caption_dropout=1.0)
    dm.setup("fit")
    assert len(dm.train_set) == 8
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixels"].dtype == torch.uint8 and batch["pixels"].shape == (3, 3, 24, 24)
    assert list(batch["caption"]) == ["", "", ""]
    assert not dm.train_set.caption_is_fixed


def test_demo_root_loads_through_the_datamodule(demo_data):
    dm = PixelArtDataModule(str(demo_data))
    dm.setup("fit")
    assert dm.pairs.images.shape[1:] == (3, 24, 24)
    assert all(c.startswith("pixel art, 24x24, portrait of bespoke punk") for c in dm.pairs.captions)
