"""OKLab, palette lock and snapping decoded images back onto the art grid."""

import torch
from synthetic import decoded_like

from bespoke_pl.data.pairs import load_pairs
from bespoke_pl.pixelart.colour import lock_to_palette as palette_lock
from bespoke_pl.pixelart.grid import reduce_blocks, upscale_nearest
from bespoke_pl.pixelart.palette import nearest_in_palette, oklab, palette_of
from bespoke_pl.pixelart.snap import snap_and_lock


def separated_palette(n: int, min_distance: float, seed: int = 0) -> torch.Tensor:
    """n random colours at least ``min_distance`` apart in OKLab, like a hand-picked pixel-art palette."""
    g = torch.Generator().manual_seed(seed)
    chosen: list[torch.Tensor] = []
    while len(chosen) < n:
        colour = torch.randint(0, 256, (3,), generator=g, dtype=torch.uint8)
        if all((oklab(colour) - oklab(c)).norm() >= min_distance for c in chosen):
            chosen.append(colour)
    return torch.stack(chosen)


def test_oklab_matches_published_values():
    lab = oklab(torch.tensor([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=torch.uint8))
    expected = torch.tensor(
        [[1, 0, 0], [0, 0, 0], [0.62796, 0.22486, 0.12585], [0.45201, -0.03246, -0.31153]]
    )
    assert torch.allclose(lab, expected, atol=1e-4)


def test_nearest_colour_is_perceptual_and_exact_colours_are_at_distance_zero():
    palette = torch.tensor([[0, 0, 0], [255, 255, 255], [200, 30, 40]], dtype=torch.uint8)
    image = torch.tensor([[[10, 12, 8], [200, 30, 40], [250, 250, 255], [180, 60, 60]]], dtype=torch.uint8)
    image = image.permute(0, 2, 1).unsqueeze(2)  # (1, 3, 1, 4)
    index, distance = nearest_in_palette(image, palette)
    assert index.flatten().tolist() == [0, 2, 1, 2]
    assert distance[0, 0, 1] == 0 and (distance.flatten()[[0, 2, 3]] > 0).all()


def test_palette_lock_uses_only_palette_colours():
    palette = separated_palette(12, 0.05)
    noise = torch.randint(
        0, 256, (3, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    locked = palette_lock(noise, palette)
    assert locked.shape == noise.shape and locked.dtype == torch.uint8
    used = palette_of(locked)
    assert all((palette == colour).all(1).any() for colour in used)
    assert torch.equal(palette_lock(locked, palette), locked)  # locking twice changes nothing


def test_snapping_a_noisy_blurred_upscale_recovers_the_art_exactly():
    palette = separated_palette(40, 0.05)
    g = torch.Generator().manual_seed(0)
    # Every pixel drawn independently: the worst case, no block shares a colour with its neighbour.
    art = palette[torch.randint(0, 40, (4, 24, 24), generator=g)].permute(0, 3, 1, 2).contiguous()
    for k in (8, 16):
        raw = decoded_like(art, k, noise=3.0, sigma=0.8)
        assert (raw != upscale_nearest(art, k)).any(1).float().mean() > 0.9  # almost every pixel is off
        assert torch.equal(snap_and_lock(raw, k, palette), art)
        # without the lock the grid is right and the colours are within a few levels (noise averaged)
        error = (reduce_blocks(raw, k).int() - art.int()).abs()
        assert error.float().mean() < 1 and error.max() <= 4


def test_snapping_recovers_demo_punks_whose_palette_has_near_duplicate_colours(demo_data):
    art = load_pairs(demo_data).images
    palette = palette_of(art)  # holds colours only 2 levels apart, so the noise must stay small
    raw = decoded_like(art, 16, noise=1.0, sigma=0.8)
    assert torch.equal(snap_and_lock(raw, 16, palette), art)


def test_snap_and_lock_switches():
    palette = separated_palette(8, 0.05)
    art = palette[torch.arange(24 * 24) % 8].T.reshape(1, 3, 24, 24)
    raw = decoded_like(art, 8, noise=2.0, sigma=0.6)
    assert snap_and_lock(raw, 8, None).shape == (1, 3, 24, 24)
    full = snap_and_lock(raw, 8, palette, snap=False)
    assert full.shape == raw.shape and all((palette == c).all(1).any() for c in palette_of(full))
    assert torch.equal(snap_and_lock(raw, 8, None, snap=False), raw)


def test_reduce_blocks_ignores_blurred_edges_and_stray_pixels():
    art = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    art[0, :, 0, 0] = torch.tensor([200, 10, 10])
    big = upscale_nearest(art, 8)
    big[0, :, 0, :] = 90  # a smeared top row
    big[0, :, 3, 4] = torch.tensor([1, 2, 3])  # a stray pixel in the centre
    assert torch.equal(reduce_blocks(big, 8), art)
