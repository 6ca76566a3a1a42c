"""The shipped configs' near-native scales on the tiny models: k = 40 (SDXL, 960 px) and k = 24 (SD 1.5,
576 px) train, round-trip, sample, snap, save, record the size and reload in `generate`."""

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

import bespoke_pl.commands.generate
from bespoke_pl.callbacks.roundtrip import RoundTripCheck
from bespoke_pl.callbacks.samples import SampleImages
from bespoke_pl.callbacks.save_lora import SaveLoRAEveryEpoch
from bespoke_pl.commands.generate import generate_images
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.lora.loading import read_lora_file
from bespoke_pl.training.module import PixelLoRAModule


@pytest.mark.parametrize(("family", "k"), [("sdxl", 40), ("sd15", 24)])
def test_native_scale_end_to_end(tmp_path, request, monkeypatch, demo_data, family, k):
    tiny = request.getfixturevalue(f"tiny_{family}")
    size, sdxl = 24 * k, family == "sdxl"
    # SDXL is told "a 1024 px image" (its own native size) while it trains at 960 px.
    module = PixelLoRAModule(
        str(tiny), family=family, pixel_scale=k, rank=2, clip_skip=2 if sdxl else 1,
        sdxl_size=1024 if sdxl else None,
    )  # fmt: skip
    check = RoundTripCheck(max_images=2)
    callbacks = [
        SaveLoRAEveryEpoch("native", save_dtype="float32"),
        SampleImages(num_prompts=1, steps=1),
        check,
    ]
    trainer = L.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, limit_train_batches=1, callbacks=callbacks,
        logger=TensorBoardLogger(tmp_path, name="run", version=0), enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=2))
    run = tmp_path / "run" / "version_0"
    assert module.encode_images(PixelArtDataModule(str(demo_data)).load().images[:1]).shape[-1] == 3 * k
    assert check.result.pixel_scale == k and check.result.images == 2
    samples = run / "samples" / "epoch-000001"
    assert Image.open(samples / "00-seed42-raw.png").size == (size, size)
    assert Image.open(samples / "00-seed42.png").size == (24, 24)  # snapped at the run's k
    lora = read_lora_file(run / "native-000001.safetensors")
    assert lora.metadata["ss_resolution"] == f"({size}, {size})"
    assert lora.metadata["modelspec.resolution"] == f"{size}x{size}"
    assert lora.metadata["bespoke_pl.pixel_scale"] == str(k)
    assert lora.metadata["bespoke_pl.sdxl_size"] == ("1024" if sdxl else "None")

    # generate reads k and the size conditioning from the header: it decodes at 24k px, snaps k x k blocks.
    told = []
    real_generate = bespoke_pl.commands.generate.generate

    def spy(*args):
        told.append(args[-1])  # conditioning_size
        return real_generate(*args)

    monkeypatch.setattr(bespoke_pl.commands.generate, "generate", spy)
    written = generate_images(
        str(tiny), str(run / "native-000001.safetensors"), prompt="pixel art, 24x24", num_images=1, steps=1,
        out=str(tmp_path / "generated"), device="cpu",
    )  # fmt: skip
    raws = sorted((tmp_path / "generated").glob("*-raw.png"))
    assert raws and all(Image.open(p).size == (size, size) for p in raws)
    arts = [p for p in written[:-1] if not p.name.endswith("-raw.png")]
    assert arts and all(Image.open(p).size == (24, 24) for p in arts)
    assert told == [1024 if sdxl else None]


def test_large_samples_are_decoded_one_image_at_a_time(tiny_sdxl):
    # The pipeline decodes a call's latents at once: 4 images of 960 px took 11.3 GB in float32 against
    # 4.3 GB for one (real SDXL VAE); past the VAE's pixel budget the decode goes one image at a time.
    from bespoke_pl.diffusion.base import load_base
    from bespoke_pl.diffusion.conditioning import encode_prompts
    from bespoke_pl.diffusion.sampling import build_pipeline, generate

    base = load_base(str(tiny_sdxl), "sdxl")
    pipe = build_pipeline(
        "sdxl", base.unet, base.vae, base.tokenizers, base.text_encoders, base.scheduler_config
    )
    decoded = []
    real_decode = base.vae._decode
    base.vae._decode = lambda z, *args, **kwargs: decoded.append(len(z)) or real_decode(z, *args, **kwargs)

    def encode(captions):
        return encode_prompts(captions, base.tokenizers, base.text_encoders, 2)

    for k, expected in ((8, [3]), (40, [1, 1, 1])):
        decoded.clear()
        images = generate(pipe, encode, ["pixel art"] * 3, [1, 2, 3], 24 * k, steps=1, batch_size=4)
        assert images.shape == (3, 3, 24 * k, 24 * k)
        assert decoded == expected, (k, decoded)
        assert not base.vae.use_slicing  # the shared VAE is left as it was found
