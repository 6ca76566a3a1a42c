"""The VAE round trip: exact with a lossless autoencoder, and the command on a tiny model."""

from types import SimpleNamespace

import torch
from torch import nn

from bespoke_pl.commands.cli import main
from bespoke_pl.data.pairs import load_pairs
from bespoke_pl.pixelart.roundtrip import vae_round_trip


class LosslessVAE(nn.Module):
    """Encode = decode = identity (plus a tiny error an exact snap must absorb)."""

    def __init__(self, error: float = 0.0) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.error = error

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x + self.error))

    def decode(self, z):
        return SimpleNamespace(sample=z)


def test_lossless_round_trip_is_exact_at_every_scale(demo_data):
    images = load_pairs(demo_data).images[:4]
    for k in (1, 8):
        result = vae_round_trip(LosslessVAE(error=1.5 / 127.5), images, k)  # 1.5 levels off everywhere
        assert result.pixels_exact == 1.0 and result.images_exact == 1.0
        assert 1.0 <= result.mean_abs_error <= 2.0


def test_round_trip_counts_lost_pixels(demo_data):
    images = load_pairs(demo_data).images[:2]

    class HalfBlack(LosslessVAE):
        def decode(self, z):
            z = z.clone()
            z[..., : z.shape[-2] // 2, :] = -1  # the top half comes back black
            return SimpleNamespace(sample=z)

    result = vae_round_trip(HalfBlack(), images, 8)
    assert result.images_exact == 0 and 0.4 < result.pixels_exact < 0.6


def test_roundtrip_command_on_the_tiny_model(tiny_sd15, demo_data, capsys):
    main(["roundtrip", "--base_model", str(tiny_sd15), "--data_root", str(demo_data),
          "--scales", "1", "8", "--max_images", "2"])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["k=1", "k=8"]
    assert all("2 images" in line and "% pixels exact" in line for line in lines)


def test_large_images_go_through_the_vae_fewer_at_a_time(demo_data):
    # 16 images of 960 px in one fp32 call took over 20 GB (an SDXL run at k = 40 was killed while
    # caching); every VAE call keeps to the pixels of 16 images at 192 px.
    from bespoke_pl.pixelart.roundtrip import images_per_vae_call
    from bespoke_pl.training.module import PixelLoRAModule
    from bespoke_pl.training.speed import cache_latents

    assert [images_per_vae_call(24 * k, 16) for k in (1, 8, 16, 24, 40)] == [16, 16, 4, 1, 1]
    images = load_pairs(demo_data).images[:6]

    class Counting(LosslessVAE):
        calls: list[int] = []

        def encode(self, x):
            self.calls.append(len(x))
            return super().encode(x)

    vae = Counting()
    for k, expected in ((8, [6]), (16, [4, 2]), (40, [1] * 6)):
        vae.calls.clear()
        assert vae_round_trip(vae, images, k).pixels_exact == 1.0
        assert vae.calls == expected, (k, vae.calls)

    vae.calls.clear()
    vae.config = SimpleNamespace(scaling_factor=1.0)
    # The cache encodes through the module's own encode_images (the one place the budget applies).
    hparams = SimpleNamespace(pixel_scale=40, latent_cache_dir=None, latent_sampling="mean")
    module = SimpleNamespace(hparams=hparams, vae=vae, device=torch.device("cpu"), latent_key="k=40")
    module.encode_images = lambda pixels, mean=False: PixelLoRAModule.encode_images(module, pixels, mean)
    cached = cache_latents(module, SimpleNamespace(images=images, alphas=None))
    assert vae.calls == [1] * 6 and len(cached.latents) == 6
