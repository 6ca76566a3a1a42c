"""The LightningModule on tiny SD 1.5 / SDXL models: what trains, what stays frozen, checkpoints, resume."""

from pathlib import Path

import lightning as L
import pytest
import torch
from diffusers import UNet2DConditionModel
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file

from bespoke_pl.callbacks.save_lora import SaveLoRAEveryEpoch
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.errors import BaseModelError
from bespoke_pl.training.module import PixelLoRAModule


def make_trainer(root: Path, callbacks=(), **kwargs) -> L.Trainer:
    return L.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=L.pytorch.loggers.TensorBoardLogger(root, name="run", version=0),
        **kwargs,
    )


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Non-LoRA weights under their original names (peft moves them to ``<layer>.base_layer``)."""
    return {
        name.replace(".base_layer", ""): p.detach().clone()
        for name, p in model.named_parameters()
        if "lora_" not in name
    }


@pytest.mark.parametrize(
    ("family", "pixel_scale", "train_text_encoder"),
    [("sd15", 1, False), ("sd15", 8, True), ("sdxl", 1, True), ("sdxl", 8, False)],
)
def test_lora_trains_and_frozen_weights_stay_bit_identical(
    request, tmp_path, demo_data, family, pixel_scale, train_text_encoder
):
    tiny = request.getfixturevalue(f"tiny_{family}")
    module = PixelLoRAModule(
        str(tiny), family=family, pixel_scale=pixel_scale, rank=4, alpha=8, clip_skip=2,
        train_text_encoder=train_text_encoder,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
    )  # fmt: skip
    trainer = make_trainer(tmp_path, max_steps=3)
    trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=4))
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss_step"])

    pristine = UNet2DConditionModel.from_pretrained(tiny, subfolder="unet").state_dict()
    trained = base_weights(module.unet)
    assert trained.keys() == pristine.keys()
    assert all(torch.equal(trained[k], pristine[k]) for k in pristine), "a frozen UNet weight changed"
    lora_b = [p for n, p in module.unet.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "LoRA up-weights start at 0 and must move"
    te_lora = [p for e in module.text_encoders for n, p in e.named_parameters() if "lora_B" in n]
    assert bool(te_lora) == train_text_encoder
    assert all(p.abs().sum() > 0 for p in te_lora)
    assert all(p.dtype == torch.float32 for p in module.trainable_parameters())
    # the latent grid really is 3k x 3k for a 24x24 image
    latents = module.encode_images(torch.zeros(1, 3, 24, 24, dtype=torch.uint8))
    assert latents.shape == (1, 4, 3 * pixel_scale, 3 * pixel_scale)


def test_family_mismatch_is_a_clear_error(tiny_sd15):
    module = PixelLoRAModule(str(tiny_sd15), family="sdxl")
    with pytest.raises(BaseModelError, match="config says family sdxl but base model .* is sd15"):
        module.configure_model()


def test_checkpoint_is_small_and_resume_continues_at_the_next_epoch(tmp_path, tiny_sd15, demo_data):
    def run(max_epochs, ckpt_path=None):
        module = PixelLoRAModule(str(tiny_sd15), rank=4, alpha=4)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        trainer = make_trainer(
            tmp_path, [SaveLoRAEveryEpoch("punk", format="diffusers"), checkpoint], max_epochs=max_epochs
        )
        trainer.fit(module, PixelArtDataModule(str(demo_data), batch_size=8), ckpt_path=ckpt_path)
        return trainer, module

    first, module = run(1)
    last = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["state_dict"] and all("lora_" in k for k in state["state_dict"])
    lora_bytes = sum(p.numel() * 4 for p in module.trainable_parameters())
    frozen_bytes = sum(p.numel() * 4 for p in module.parameters())
    # LoRA + two AdamW moments + loop state; far below the frozen weights it sits on
    assert last.stat().st_size < 3 * lora_bytes + 400_000 < frozen_bytes
    epoch1 = tmp_path / "run" / "version_0" / "punk-000001.safetensors"
    stamp = epoch1.stat().st_mtime_ns, epoch1.read_bytes()

    second, resumed = run(2, ckpt_path=str(last))
    assert second.current_epoch == 2 and second.global_step == 2 * first.global_step
    assert (tmp_path / "run" / "version_0" / "punk-000002.safetensors").is_file()
    assert (epoch1.stat().st_mtime_ns, epoch1.read_bytes()) == stamp, "epoch 1's file was rewritten"
    saved = load_file(tmp_path / "run" / "version_0" / "punk-000002.safetensors")
    live = resumed.lora_state_dicts()["unet"]
    assert all(torch.allclose(saved[f"unet.{k}"].float(), v, atol=1e-3) for k, v in live.items())
