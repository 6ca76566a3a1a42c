"""``data.alpha_mask``: transparent sprites train with the loss weighted by their alpha per latent cell,
instead of being refused; the background option still works, the cache carries the mask, and a fully
transparent region contributes nothing to the loss."""

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from bespoke_pl.callbacks.save_lora import SaveLoRAEveryEpoch
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.data.pairs import PixelPairDataset, load_pairs
from bespoke_pl.diffusion.losses import latent_mask
from bespoke_pl.diffusion.objective import diffusion_loss
from bespoke_pl.errors import DatasetError
from bespoke_pl.training.cache import LatentCache
from bespoke_pl.training.module import PixelLoRAModule


@pytest.fixture(scope="module")
def sprites(tmp_path_factory):
    """Four 24x24 sprites: three RGBA with their left 8 columns fully transparent, one opaque RGB."""
    folder = tmp_path_factory.mktemp("sprites")
    rng = np.random.default_rng(0)
    for i in range(4):
        rgba = np.zeros((24, 24, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 256, 3, dtype=np.uint8)  # one flat colour, as sprites are
        rgba[..., 3] = 255
        if i < 3:
            rgba[:, :8] = (200, 10, 10, 0)  # transparent, with a colour that must not show
        mode, pixels = ("RGBA", rgba) if i < 3 else ("RGB", rgba[..., :3])
        Image.fromarray(pixels, mode).save(folder / f"sprite_{i}.png")
        (folder / f"sprite_{i}.txt").write_text(f"pixel art, sprite {i}")
    return folder


def test_transparency_is_accepted_with_alpha_mask_and_composited(sprites):
    with pytest.raises(
        DatasetError, match=r"no `background` colour is set \(or set `alpha_mask`\).*sprite_0"
    ):
        load_pairs(sprites)
    pairs = load_pairs(sprites, alpha_mask=True)
    assert pairs.alphas.shape == (4, 1, 24, 24) and pairs.alphas.dtype == torch.uint8
    assert (pairs.alphas[:3, :, :, :8] == 0).all() and (pairs.alphas[:3, :, :, 8:] == 255).all()
    assert (pairs.alphas[3] == 255).all()  # an opaque image: all 255
    assert (pairs.images[:3, :, :, :8] == 0).all()  # composited on black without a background
    on_colour = load_pairs(sprites, background="#102030", alpha_mask=True)
    assert on_colour.images[0, :, 0, 0].tolist() == [16, 32, 48] and torch.equal(
        on_colour.alphas, pairs.alphas
    )
    assert load_pairs(sprites, background="#102030").alphas is None  # the background option alone: no mask
    item = PixelPairDataset(pairs)[1]
    assert torch.equal(item["alpha"], pairs.alphas[1])


def test_latent_mask_is_the_upscaled_alpha_area_averaged_to_the_latent():
    alpha = torch.zeros(1, 1, 24, 24, dtype=torch.uint8)
    alpha[..., 12:] = 255  # right half opaque
    # pixel_scale 1: a latent cell covers 8x8 art pixels; column 1 covers art columns 8-15, half opaque.
    assert torch.equal(latent_mask(alpha, 1, (3, 3))[0, 0], torch.tensor([[0.0, 0.5, 1.0]] * 3))
    # pixel_scale 8: one art pixel is one latent cell, the mask is the alpha itself.
    assert torch.equal(latent_mask(alpha, 8, (24, 24)), alpha.float() / 255)
    # pixel_scale 2: nearest-upscaled to 48 px, then the mean of each 8x8 block (4x4 art pixels).
    upscaled = F.interpolate(alpha.float() / 255, scale_factor=2, mode="nearest")
    assert torch.equal(latent_mask(alpha, 2, (6, 6)), F.avg_pool2d(upscaled, 8))


def test_masked_loss_is_kohyas_mean_over_all_cells():
    prediction, target = torch.ones(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)
    mask = torch.zeros(2, 1, 3, 3)
    mask[..., 1:] = 1.0
    masked = diffusion_loss(prediction, target, mask=mask)
    assert torch.isclose(masked, torch.tensor(2 / 3))  # masked cells count in the mean, as kohya's do
    prediction[..., 0] = 100.0  # any error in the masked-out column: nothing
    assert torch.equal(diffusion_loss(prediction, target, mask=mask), masked)
    with pytest.raises(ValueError, match="masks"):
        LatentCache(torch.zeros(2, 4, 3, 3), torch.zeros(3, 1, 3, 3))


def test_sprites_train_with_the_mask_and_a_transparent_region_adds_nothing(tmp_path, tiny_sd15, sprites):
    module = PixelLoRAModule(str(tiny_sd15), family="sd15", pixel_scale=1, rank=2, alpha=2)
    trainer = L.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, limit_train_batches=1,
        callbacks=[SaveLoRAEveryEpoch("sprites", save_dtype="float32")],
        logger=L.pytorch.loggers.TensorBoardLogger(tmp_path, name="run", version=0),
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
    )  # fmt: skip
    datamodule = PixelArtDataModule(str(sprites), batch_size=4, alpha_mask=True)
    trainer.fit(module, datamodule)
    with safe_open(tmp_path / "run" / "version_0" / "sprites-000001.safetensors", "pt") as f:
        assert f.metadata()["bespoke_pl.alpha_mask"] == "True"

    batch = next(iter(datamodule.train_dataloader()))
    index = batch["index"]
    cached = module.latent_cache.mask(index)  # the cache carries the mask, indexed like the latents
    assert torch.equal(cached, module.loss_mask(batch["alpha"], (3, 3)))
    assert (cached[index < 3][..., 0] == 0).all() and (cached[..., 1:] > 0).all()

    real_predict = module.predict
    offset = torch.zeros(4, 4, 3, 3)

    def loss(shift_left_column: float, of: dict = batch) -> torch.Tensor:
        offset[..., 0] = torch.where(index < 3, shift_left_column, 0.0).view(-1, 1, 1)
        module.predict = lambda *a: real_predict(*a) + offset
        torch.manual_seed(0)
        with torch.no_grad():
            return module.batch_loss(of)

    assert torch.equal(loss(5.0), loss(0.0))  # the transparent column of the three sprites: no loss
    cache, module.latent_cache = module.latent_cache, None  # uncached: the same mask, from the batch
    assert torch.allclose(loss(5.0), cache_loss := loss(0.0), atol=1e-6)
    unmasked = {k: v for k, v in batch.items() if k != "alpha"}
    assert loss(5.0, unmasked) > loss(0.0, unmasked) > cache_loss  # without the mask it would count
    module.latent_cache = cache
