"""Latent and text-embedding caches: same loss as encoding every step, refusals with reasons, disk reuse."""

import logging

import lightning as L
import pytest
import torch

from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.training.cache import LatentCache, latent_cache_refusal, text_cache_refusal
from bespoke_pl.training.module import PixelLoRAModule


def fitted(tiny, data, max_steps=1, data_kwargs=None, **module_kwargs):
    module = PixelLoRAModule(str(tiny), rank=4, alpha=4, **module_kwargs)
    datamodule = PixelArtDataModule(str(data), batch_size=4, **(data_kwargs or {}))
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule)
    return module, datamodule


def loss_on(module, batch, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        return module.batch_loss(batch)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_cached_and_uncached_training_give_the_same_loss(request, demo_data, family):
    tiny = request.getfixturevalue(f"tiny_{family}")
    module, datamodule = fitted(tiny, demo_data, max_steps=1)
    assert module.latent_cache is not None and module.text_cache is not None
    batch = next(iter(datamodule.train_dataloader()))
    cached = loss_on(module, batch)
    latent_cache, text_cache = module.latent_cache, module.text_cache
    module.latent_cache = module.text_cache = None
    uncached = loss_on(module, batch)
    assert torch.allclose(cached, uncached, rtol=1e-5, atol=1e-6)
    # the cache holds exactly what encoding now gives
    index = batch["index"]
    assert torch.allclose(latent_cache[index], module.encode_images(batch["pixels"]), atol=1e-5)
    text = module.encode_text(list(batch["caption"]))
    assert torch.allclose(text_cache[index].sequence, text.sequence, atol=1e-6)


def test_refusals_name_the_option():
    assert latent_cache_refusal("mean") is None
    assert "latent_sampling='sample'" in latent_cache_refusal("sample")
    assert text_cache_refusal(False, 0.0, False) is None
    assert "train_text_encoder" in text_cache_refusal(True, 0.0, False)
    assert "shuffle_captions" in text_cache_refusal(False, 0.0, True)
    assert "caption_dropout=0.1" in text_cache_refusal(False, 0.1, False)


def test_invalidating_options_turn_the_caches_off_with_their_reason(tiny_sd15, demo_data, caplog):
    with caplog.at_level(logging.WARNING, logger="bespoke_pl"):
        module, _ = fitted(
            tiny_sd15, demo_data, latent_sampling="sample", data_kwargs={"caption_dropout": 0.5}
        )
    assert module.latent_cache is None and module.text_cache is None
    assert "latent cache off: latent_sampling='sample'" in caplog.text
    assert "text-embedding cache off: caption_dropout=0.5" in caplog.text


def test_disk_cache_is_reused_and_keyed_by_pixels_and_vae(tmp_path):
    calls = []

    def encode(images):
        calls.append(len(images))
        return images.float().mean(1, keepdim=True).repeat(1, 4, 1, 1)

    images = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8)
    first = LatentCache.build(images, encode, batch_size=2, cache_dir=tmp_path, key_extra="vae-a|k=8")
    assert sum(calls) == 5 and len(list(tmp_path.glob("*.safetensors"))) == 5
    again = LatentCache.build(images, encode, cache_dir=tmp_path, key_extra="vae-a|k=8")
    assert sum(calls) == 5, "a second build must read every latent from disk"
    assert torch.equal(first.latents, again.latents)
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1
    LatentCache.build(changed, encode, cache_dir=tmp_path, key_extra="vae-a|k=8")
    assert sum(calls) == 6, "only the changed image is encoded again"
    LatentCache.build(images, encode, cache_dir=tmp_path, key_extra="vae-b|k=8")
    assert sum(calls) == 11, "another VAE means new latents"
