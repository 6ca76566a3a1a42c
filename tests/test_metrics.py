"""Each pixel-art metric moves the right way on constructed images, accumulates and merges like a Metric."""

import pytest
import torch
from synthetic import blur, decoded_like

from bespoke_pl.data.pairs import load_pairs
from bespoke_pl.pixelart.grid import upscale_nearest
from bespoke_pl.pixelart.kid import PixelKID
from bespoke_pl.pixelart.metrics import (
    ColourCount,
    GridFidelity,
    HeadShape,
    Memorisation,
    PaletteAdherence,
    PixelArtQuality,
)
from bespoke_pl.pixelart.palette import palette_of
from bespoke_pl.pixelart.quality import background_colours, foreground_masks


@pytest.fixture(scope="module")
def punks(demo_data) -> torch.Tensor:
    return load_pairs(demo_data).images  # (16, 3, 24, 24)


def with_colours(n: int) -> torch.Tensor:
    """A 24x24 image with exactly n distinct colours."""
    colours = torch.stack([torch.tensor([(37 * i) % 256, (91 * i) % 256, i]) for i in range(n)]).to(
        torch.uint8
    )
    return colours[torch.arange(576) % n].T.reshape(1, 3, 24, 24)


def values(metric) -> dict[str, float]:
    return {k: round(float(v), 5 if k.endswith("colours") else 6) for k, v in metric.compute().items()}


def test_colour_count_and_target_range():
    metric = ColourCount((35, 50))
    metric.update(with_colours(40))
    assert values(metric) == {"colours": 40, "colours_in_range": 1}
    metric.update(torch.cat([with_colours(10), with_colours(51)]))  # accumulates over batches
    assert values(metric) == {"colours": round((40 + 10 + 51) / 3, 5), "colours_in_range": round(1 / 3, 6)}
    narrow = ColourCount((5, 12))
    narrow.update(with_colours(10))
    assert values(narrow)["colours_in_range"] == 1


def test_palette_adherence_falls_as_colours_leave_the_palette(punks):
    greys = torch.tensor([[0, 0, 0], [128, 128, 128], [255, 255, 255]], dtype=torch.uint8)
    grey_image = greys[torch.arange(576) % 3].T.reshape(1, 3, 24, 24)
    on = PaletteAdherence(greys)
    on.update(grey_image)
    assert values(on) == {"palette_share": 1, "palette_distance": 0}
    half = grey_image.clone()
    half[:, :, :12] = torch.tensor([220, 30, 40], dtype=torch.uint8).view(
        1, 3, 1, 1
    )  # red: far from any grey
    off = PaletteAdherence(greys)
    off.update(half)
    assert values(off)["palette_share"] == 0.5 and values(off)["palette_distance"] > 0.1
    slightly = PaletteAdherence(palette_of(punks))
    slightly.update(decoded_like(punks, 8, noise=1.0, sigma=0.01))  # VAE-like noise, nothing else
    assert values(slightly)["palette_share"] > 0.95


def test_grid_fidelity_perfect_blurred_noisy_and_shifted(punks):
    def fidelity(raw):
        metric = GridFidelity(8)
        metric.update(raw)
        return values(metric)["grid_fidelity"]

    punks = punks[:6]
    big = upscale_nearest(punks, 8)
    assert fidelity(big) == 1.0
    blurred = fidelity(blur(big, 1.2).round().to(torch.uint8))
    shifted = fidelity(big.roll((4, 4), dims=(2, 3)))  # art pixels straddle four blocks each
    noisy = fidelity(decoded_like(punks, 8, noise=1.0, sigma=0.01))
    assert 0.5 < blurred < 0.95 and shifted < 0.9 and noisy > 0.97


def test_head_shape_sees_torsos_and_wrong_silhouettes(punks):
    same = HeadShape(punks)
    same.update(punks)
    assert values(same)["silhouette_iou"] == 1.0
    assert values(same)["torso_share"] == 0 and values(same)["torso_ratio"] <= 1.0

    torso = punks.clone()
    torso[:, :, -5:, 4:20] = torch.tensor([219, 177, 128], dtype=torch.uint8).view(1, 3, 1, 1)  # shoulders
    bodies = HeadShape(punks)
    bodies.update(torso)
    assert values(bodies)["torso_share"] == 1 and values(bodies)["torso_ratio"] > 3
    assert values(bodies)["silhouette_iou"] < 0.9

    empty = punks[:, :, :1, :1].expand(-1, -1, 24, 24).contiguous()  # background only
    nothing = HeadShape(punks)
    nothing.update(empty)
    assert values(nothing)["silhouette_iou"] == 0 and values(nothing)["torso_ratio"] == 0


def test_background_is_the_border_colour(punks):
    masks = foreground_masks(punks)
    assert (
        not masks[:, 0].any() and masks[:, -1].any()
    )  # the top row is background; the neck reaches the bottom
    assert torch.allclose(
        background_colours(punks)[0], background_colours(punks[:1, :, :1, :1].expand(1, 3, 24, 24))[0]
    )


def test_memorisation_flags_exact_and_near_copies(punks):
    exact = Memorisation(punks)
    exact.update(punks[3:5])
    assert values(exact) == {"copy_distance": 0, "exact_copies": 1, "near_copies": 1}

    edited = punks[3:4].clone()
    edited[0, :, 8:10, 8:13] = 255  # 10 pixels painted over
    near = Memorisation(punks)
    near.update(edited)
    assert values(near)["exact_copies"] == 0 and values(near)["near_copies"] == 1
    assert values(near)["copy_distance"] == pytest.approx(10 / 576, abs=1e-6)

    original = Memorisation(punks)
    original.update(torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8))
    assert values(original)["copy_distance"] > 0.5 and values(original)["near_copies"] == 0

    leave_one_out = Memorisation(punks)
    leave_one_out.update(punks[3:5], exclude=torch.tensor([3, 4]))
    assert values(leave_one_out)["exact_copies"] == 0 and values(leave_one_out)["copy_distance"] > 0


def test_states_are_sums_so_processes_merge(punks):
    whole, first, second = (HeadShape(punks) for _ in range(3))
    whole.update(punks)
    first.update(punks[:7])
    second.update(punks[7:])
    assert set(first._reductions) == {*HeadShape.keys, "images"}
    assert all(fn.__name__ in ("dim_zero_sum", "sum") for fn in first._reductions.values())
    first.merge_state(second)  # what a sync across processes does with the states
    assert values(first) == values(whole)


def test_kid_ranks_training_like_images_before_torsos_before_noise(demo_data):
    punks = load_pairs(demo_data).images
    train, held_out = punks[:8], punks[8:]
    torsos = held_out.clone()
    torsos[:, :, -5:, 4:20] = 200
    noise = torch.randint(
        0, 256, (8, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    kid = {}
    for name, images in (("held_out", held_out), ("torsos", torsos), ("noise", noise)):
        metric = PixelKID(train, subset_size=8)
        metric.update(images)
        kid[name] = values(metric)["kid"]
    assert kid["held_out"] < kid["torsos"] < kid["noise"]
    one = PixelKID(train)
    one.update(punks[:1])
    assert torch.isnan(one.compute()["kid"])


def test_quality_collection_on_raw_images(punks):
    quality = PixelArtQuality(punks, pixel_scale=8, prefix="quality/raw/", kid=True)
    quality.update(punks[:8], raw=upscale_nearest(punks[:8], 8))
    result = values(quality)
    assert result["quality/raw/grid_fidelity"] == 1 and result["quality/raw/exact_copies"] == 1
    assert result["quality/raw/palette_share"] == 1 and result["quality/raw/torso_share"] == 0
    assert set(result) == {
        f"quality/raw/{name}"
        for name in (
            "colours", "colours_in_range", "palette_share", "palette_distance", "grid_fidelity",
            "silhouette_iou", "silhouette_iou_mean", "torso_ratio", "torso_share",
            "copy_distance", "exact_copies", "near_copies", "kid",
        )
    }  # fmt: skip
    art = PixelArtQuality(punks)
    art.update(punks[:4])
    assert "grid_fidelity" not in values(art) and values(art)["colours"] == pytest.approx(
        float(sum(len(palette_of(p[None])) for p in punks[:4]) / 4)
    )


def test_per_image_values_are_what_the_means_are_made_of(punks):
    torso = punks[:4].clone()
    torso[:, :, -5:, 4:20] = torch.tensor([219, 177, 128], dtype=torch.uint8).view(1, 3, 1, 1)
    art = torch.cat([punks[4:8], torso])
    raw = decoded_like(art, 4, noise=3.0, sigma=0.6)
    quality = PixelArtQuality(punks, pixel_scale=4)
    columns = quality.measure(art, raw=raw)
    assert all(len(column) == 8 for column in columns.values())
    assert columns["torso_share"].tolist() == [False] * 4 + [True] * 4
    assert columns["exact_copies"][:4].all() and punks[columns["nearest"][:4]].equal(punks[4:8])
    for name, mean in quality.compute().items():
        assert float(mean) == pytest.approx(float(columns[name].double().mean()), abs=1e-6), name
    with pytest.raises(ValueError, match="needs the raw images"):
        quality.update(art)
