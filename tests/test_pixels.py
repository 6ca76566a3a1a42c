import torch

from bespoke_pl.pixelart.grid import image_grid, reduce_blocks, to_model_range, to_uint8, upscale_nearest
from bespoke_pl.pixelart.palette import palette_from_hex, palette_of, palette_to_hex
from bespoke_pl.pixelart.quality import colour_counts


def test_uint8_float_round_trip_is_exact_for_every_level():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(1, 3, 1, 1)
    floats = to_model_range(levels)
    assert floats.min() == -1 and floats.max() == 1
    assert torch.equal(to_uint8(floats), levels)
    # and the other way: the 256 floats the data can produce map back to themselves
    assert torch.equal(to_model_range(to_uint8(floats)), floats)


def test_to_uint8_clamps_overshoot():
    assert to_uint8(torch.tensor([-1.5, 1.5])).tolist() == [0, 255]


def test_upscale_then_reduce_is_identity():
    art = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8)
    for k in (1, 2, 8):
        big = upscale_nearest(art, k)
        assert big.shape == (2, 3, 24 * k, 24 * k)
        assert torch.equal(big[..., :k, :k], art[..., :1, :1].expand(2, 3, k, k))
        assert torch.equal(reduce_blocks(big, k), art)


def test_reduce_blocks_takes_the_most_common_colour():
    art = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    art[0, :, 0, 0] = torch.tensor([200, 10, 10])
    big = upscale_nearest(art, 4)
    big[0, :, 0, 0] = torch.tensor([1, 2, 3])  # a few stray pixels in block (0, 0)
    big[0, :, 1, 1] = torch.tensor([4, 5, 6])
    assert torch.equal(reduce_blocks(big, 4), art)


def test_colours_and_palette():
    art = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    art[0, 0, 0, 0] = 255
    art[1, 2, 1, 1] = 7
    assert colour_counts(art[:1]).tolist() == [2]
    palette = palette_of(art)
    assert palette.shape == (3, 3)
    assert palette_to_hex(palette) == ["#000000", "#000007", "#ff0000"]
    assert torch.equal(palette_from_hex(palette_to_hex(palette)), palette)


def test_image_grid_places_images():
    images = torch.full((3, 3, 4, 4), 9, dtype=torch.uint8)
    grid = image_grid(images, columns=2, padding=1)
    assert grid.shape == (3, 2 * 5 + 1, 2 * 5 + 1)
    assert grid[:, 1:5, 1:5].eq(9).all() and grid[:, 6:10, 6:10].eq(0).all()
