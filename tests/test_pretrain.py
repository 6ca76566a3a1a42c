"""The pretrained tiny bases: the recipe is reproducible, and the shipped weights really draw punks."""

import hashlib
from pathlib import Path

import pytest
import torch

from bespoke_pl.commands.cli import main
from bespoke_pl.diffusion.base import load_base, resolve_spec
from bespoke_pl.errors import BaseModelError
from bespoke_pl.offline.pretrained import PRETRAINED_DIR, tiny_punks_path
from bespoke_pl.tinybases.measure import measure_base
from bespoke_pl.tinybases.pretrain import pretrain_tiny_punks
from bespoke_pl.tinybases.punks import punk_image
from bespoke_pl.tinybases.vae import vae_report


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


STEPS = {"vae_steps": 4, "decoder_steps": 2, "refine_steps": 2, "unet_steps": 3, "batch_size": 2}


@pytest.fixture(scope="module")
def seed5(tmp_path_factory) -> Path:
    """A few steps of the SDXL recipe from seed 5 (two tests compare against it)."""
    return pretrain_tiny_punks("sdxl", tmp_path_factory.mktemp("pretrain") / "seed5", seed=5, **STEPS)


def test_the_same_seed_gives_the_same_weights_and_another_seed_other_weights(tmp_path, seed5):
    steps, first = STEPS, seed5
    again = pretrain_tiny_punks("sdxl", tmp_path / "b", seed=5, **steps)
    other = pretrain_tiny_punks("sdxl", tmp_path / "c", seed=6, **steps)
    assert digests(first) == digests(again)
    assert set(digests(first)) == {
        f"{name}/{file}"
        for name, file in [
            ("unet", "diffusion_pytorch_model.safetensors"),
            ("vae", "diffusion_pytorch_model.safetensors"),
            ("text_encoder", "model.safetensors"),
            ("text_encoder_2", "model.safetensors"),
        ]
    }
    differ = {k for k in digests(first) if digests(first)[k] != digests(other)[k]}
    assert {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"} <= differ
    # The second family reuses the VAE as it is.
    sd15 = pretrain_tiny_punks("sd15", tmp_path / "d", seed=5, unet_steps=2, batch_size=2, vae_from=first)
    assert (
        digests(sd15)["vae/diffusion_pytorch_model.safetensors"]
        == digests(first)["vae/diffusion_pytorch_model.safetensors"]
    )


def test_shipped_bases_are_small_diffusers_folders_named_by_spec():
    total = sum(p.stat().st_size for p in PRETRAINED_DIR.rglob("*") if p.is_file())
    assert total <= 10_000_000
    for family in ("sd15", "sdxl"):
        assert resolve_spec(f"tiny-punks:{family}") == str(tiny_punks_path(family))
        base = load_base(f"tiny-punks:{family}", family)
        assert base.family == family and base.source == f"tiny-punks:{family}"
    with pytest.raises(BaseModelError, match="valid: tiny-punks:sd15, tiny-punks:sdxl"):
        resolve_spec("tiny-punks:sd3")


def test_shipped_vae_round_trips_both_demo_styles():
    vae = load_base("tiny-punks:sdxl").vae
    base, neon = (float(line.split("%")[0].split()[-1]) for line in vae_report(vae))
    # Measured: 98.57% and 98.42% of the pixels exact after snap and palette lock at pixel_scale 8.
    assert base >= 98.0 and neon >= 98.0, (base, neon)


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_shipped_base_draws_base_style_heads(family):
    # The issue of record's bars, on the shipped weights (docs/tiny-bases.md), with Euler a: SDXL IoU
    # 0.90, SD 1.5 0.87, no torsos. A random tiny base scores an IoU of about 0.43 and no faces of either
    # style; deterministic Euler leaves a background grain on a few seeds (IoU 0.76-0.78, see docs/tiny-bases.md).
    values = measure_base(f"tiny-punks:{family}")
    assert values["silhouette_iou"] >= 0.8 and values["art/silhouette_iou"] >= 0.8, values
    assert values["torso_share"] == 0, values
    assert values["grid_fidelity"] >= 0.9, values
    assert values["base_share"] >= 0.8 and values["neon_share"] <= 0.1, values
    assert values["background_match"] >= 0.8, values


def test_pretrain_tiny_command_measures_a_base(capsys):
    argv = ["--measure", "tiny-punks:sd15", "--samples", "4", "--sampler", "euler"]
    main(["pretrain-tiny", *argv, "--threads", str(torch.get_num_threads())])
    out = capsys.readouterr().out
    assert out.startswith("tiny-punks:sd15, 4 samples, euler: ") and "silhouette_iou=" in out


def test_punk_image_is_the_demo_set_image(tmp_path):
    import numpy as np
    from PIL import Image

    from bespoke_pl.data.demo import write_demo_dataset

    folder = write_demo_dataset(tmp_path / "neon", count=3, style="neon")
    saved = torch.from_numpy(np.array(Image.open(folder / "punk_002.png"))).permute(2, 0, 1)
    assert torch.equal(punk_image(2, "neon"), saved)


def test_the_background_recipe_changes_only_the_unet_training(tmp_path, seed5):
    """--noise_offset / --high_noise_weight reach the UNet's training (other weights), not the VAE's."""
    weighted = seed5  # the defaults: noise offset 0.1, high-noise weight 20
    plain = pretrain_tiny_punks("sdxl", tmp_path / "b", seed=5, noise_offset=0, high_noise_weight=1, **STEPS)
    a, b = digests(plain), digests(weighted)
    assert a["vae/diffusion_pytorch_model.safetensors"] == b["vae/diffusion_pytorch_model.safetensors"]
    assert a["unet/diffusion_pytorch_model.safetensors"] != b["unet/diffusion_pytorch_model.safetensors"]


def test_unet_from_goes_on_training_the_unet_and_keeps_the_rest(tmp_path, seed5):
    """A second UNet stage from a trained folder: same weights on a rerun, the VAE and tokenizers kept."""
    steps = {"unet_steps": 2, "batch_size": 2, "unet_lr": 3e-4}
    more = pretrain_tiny_punks("sdxl", tmp_path / "more", seed=1, unet_from=seed5, **steps)
    again = pretrain_tiny_punks("sdxl", tmp_path / "again", seed=1, unet_from=seed5, **steps)
    before, after = digests(seed5), digests(more)
    assert after == digests(again)
    assert (
        after["vae/diffusion_pytorch_model.safetensors"] == before["vae/diffusion_pytorch_model.safetensors"]
    )
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert after[part] != before[part], part
    for name in ("tokenizer/vocab.json", "tokenizer_2/merges.txt", "scheduler/scheduler_config.json"):
        assert (more / name).read_bytes() == (seed5 / name).read_bytes(), name


def test_pretrain_tiny_refuses_a_wrong_start_before_training(tmp_path, seed5, capsys):
    wrong = {
        "is an sdxl model, not --family sd15": ["--family", "sd15", "--unet_from", str(seed5)],
        "is not a tiny-punks folder (no unet/ or vae/)": ["--unet_from", str(tmp_path)],
    }
    for message, args in wrong.items():
        with pytest.raises(SystemExit) as refused:
            main(["pretrain-tiny", "--out", str(tmp_path / "out"), *args])
        assert refused.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
