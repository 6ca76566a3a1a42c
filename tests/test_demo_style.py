"""The demo measures: which style drew a face, and whether the prompted background came out."""

import pytest
import torch

from bespoke_pl.data.demo import BACKGROUNDS, NEON_SKINS, SKINS, caption, demo_traits
from bespoke_pl.data.demo_style import background_matches, demo_measures, face_styles, prompted_background
from bespoke_pl.pixelart.palette import oklab
from bespoke_pl.tinybases.punks import punk_image


def punks(style: str, count: int = 64) -> tuple[torch.Tensor, list[str]]:
    images = torch.stack([punk_image(i, style) for i in range(count)])
    return images, [caption(demo_traits(i)) for i in range(count)]


@pytest.mark.parametrize("style", ["base", "neon"])
def test_every_demo_punk_is_recognised_as_its_style(style):
    art, captions = punks(style)
    values = demo_measures(art, captions)
    assert values[f"{style}_share"] == 1.0
    assert values["neon_share" if style == "base" else "base_share"] == 0.0
    assert values["background_match"] == 1.0


def test_neon_tones_are_far_from_the_base_tones_and_the_backgrounds():
    def lab(colours):
        return oklab(torch.tensor(list(colours.values()), dtype=torch.uint8))

    assert torch.cdist(lab(NEON_SKINS), lab(SKINS)).min() > 0.14
    assert torch.cdist(lab(NEON_SKINS), lab(BACKGROUNDS)).min() > 0.11


def test_noise_and_flat_images_belong_to_no_style():
    noise = torch.randint(
        0, 256, (8, 3, 24, 24), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    flat = torch.full((1, 3, 24, 24), 128, dtype=torch.uint8)
    # A random colour may land nearest a skin tone, but four random probes rarely agree on one style.
    assert (face_styles(noise) == -1).float().mean() >= 0.5
    assert (face_styles(flat) >= -1).all()


def test_background_match_reads_the_caption():
    art, captions = punks("base", 8)
    wanted = [prompted_background(c) for c in captions]
    other = next(name for name in BACKGROUNDS if name != wanted[0])
    swapped = [captions[0].replace(f"{wanted[0]} background", f"{other} background"), *captions[1:]]
    assert background_matches(art, swapped).tolist() == [False] + [True] * 7
    assert prompted_background("pixel art, a punk") is None
    assert not background_matches(art[:1], ["pixel art, a punk"]).item()
