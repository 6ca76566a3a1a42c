"""The demo punks: strict 24x24 heads whose captions describe what was drawn."""

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bespoke_pl.data.demo import (
    BACKGROUNDS,
    CAPTION_PREFIX,
    EMBER,
    GOLD,
    HAIR_STYLES,
    SHADES_GLARE,
    SKINS,
    caption,
    draw_punk,
    sample_traits,
    write_demo_dataset,
)
from bespoke_pl.data.demo_sets import demo_dataset_path, resolve_demo


def _pairs(folder: Path) -> list[tuple[np.ndarray, str]]:
    return [
        (np.asarray(Image.open(png).convert("RGB")), png.with_suffix(".txt").read_text().strip())
        for png in sorted(folder.glob("*.png"))
    ]


def _has(pixels: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool((pixels == colour).all(axis=-1).any())


def test_writes_count_pairs(demo_data: Path) -> None:
    names = sorted(p.name for p in demo_data.iterdir())
    assert names == sorted(
        [f"punk_{i:03d}.png" for i in range(16)] + [f"punk_{i:03d}.txt" for i in range(16)]
    )


def test_images_are_strict_opaque_24x24_rgb(demo_data: Path) -> None:
    for png in demo_data.glob("*.png"):
        with Image.open(png) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (24, 24))


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = write_demo_dataset(tmp_path / "a", count=6, seed=3)
    second = write_demo_dataset(tmp_path / "b", count=6, seed=3)
    smaller = write_demo_dataset(tmp_path / "c", count=4, seed=3)
    other = write_demo_dataset(tmp_path / "d", count=6, seed=4)
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes()
    for path in smaller.iterdir():  # a smaller set is a prefix of a larger one
        assert path.read_bytes() == (first / path.name).read_bytes()
    assert any(p.read_bytes() != (other / p.name).read_bytes() for p in first.glob("*.png"))


def test_captions_describe_what_is_drawn(demo_data: Path) -> None:
    for pixels, text in _pairs(demo_data):
        assert text.startswith(CAPTION_PREFIX + ", ")
        parts = text.removeprefix(CAPTION_PREFIX + ", ").split(", ")
        gender, skin, background = parts[:3]
        assert gender in ("male", "female")
        assert skin.removesuffix(" skin") in SKINS
        assert tuple(pixels[0, 0]) == BACKGROUNDS[background.removesuffix(" background")]
        hair = parts[3]
        assert hair == "bald" or any(hair.endswith(" " + style) for style in HAIR_STYLES)
        assert ("sunglasses" in parts) == _has(pixels, SHADES_GLARE)
        assert ("earring" in parts) == _has(pixels, GOLD)
        assert ("cigarette" in parts) == _has(pixels, EMBER)


def test_colour_counts_look_like_shaded_pixel_art(demo_data: Path) -> None:
    for pixels, _ in _pairs(demo_data):
        assert 10 <= len(np.unique(pixels.reshape(-1, 3), axis=0)) <= 40


def test_heads_only_no_torso(demo_data: Path) -> None:
    for pixels, _ in _pairs(demo_data):
        foreground = (pixels != pixels[0, 0]).any(axis=-1)
        widths = foreground.sum(axis=1)
        assert widths[-3:].max() <= 0.6 * widths.max()


def test_every_trait_appears_in_a_larger_sample() -> None:
    traits = [sample_traits(random.Random(i)) for i in range(200)]
    captions = {part for t in traits for part in caption(t).split(", ")}
    for style in HAIR_STYLES[1:]:
        assert any(part.endswith(" " + style) for part in captions), style
    expected = {"bald", "sunglasses", "nerd glasses", "earring", "cigarette", "male", "female"}
    expected |= {f"{s} skin" for s in SKINS} | {f"{b} background" for b in BACKGROUNDS}
    assert expected <= captions
    assert {"beard", "mustache", "lipstick"} <= {part.split()[-1] for part in captions}
    assert draw_punk(traits[0]).size == (24, 24)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="data"):
        write_demo_dataset(tmp_path / "data", count=2)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["mine.png"]


def test_cached_path_and_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BESPOKE_PL_CACHE", str(tmp_path))
    path = resolve_demo("demo:punks")
    assert path == str(tmp_path / "demo-punks-neon-48")
    assert len(list(Path(path).glob("*.png"))) == 48
    assert demo_dataset_path(count=48) == Path(path)  # cached: no error about a non-empty folder
    base = resolve_demo("demo:base-punks")
    assert base == str(tmp_path / "demo-punks-base-48")
    # The two styles draw the same punks with the same captions; only the skin differs.
    assert (Path(base) / "punk_007.txt").read_text() == (Path(path) / "punk_007.txt").read_text()
    assert (Path(base) / "punk_007.png").read_bytes() != (Path(path) / "punk_007.png").read_bytes()
    assert resolve_demo("data/punks") is None
    with pytest.raises(ValueError, match="demo:punks, demo:base-punks"):
        resolve_demo("demo:cats")
