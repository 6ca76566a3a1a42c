"""The optimizer of a LoRA run: one parameter group per part (UNet, text encoders), and the LR schedule."""

from __future__ import annotations

import math

import lightning as L
import torch

from bespoke_pl.lora.inject import lora_parameters


def lr_factor(kind: str, warmup: int, total: int):
    """The learning-rate multiplier per optimizer step: linear warmup, then constant, linear or cosine."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if kind == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def lora_optimizer(module: L.LightningModule) -> dict:
    """``configure_optimizers`` of :class:`~bespoke_pl.training.module.PixelLoRAModule`.

    The groups are named ``unet`` and ``te`` (the LR monitor and the LoRA header read the names); the text
    encoders take ``text_encoder_lr`` when it is set. The schedule steps per optimizer step over the whole
    run (``estimated_stepping_batches``), so resuming continues the same curve.
    """
    h = module.hparams
    groups = [{"params": lora_parameters(module.unet), "name": "unet"}]
    if h.train_text_encoder:
        group = {"params": [p for e in module.text_encoders for p in lora_parameters(e)], "name": "te"}
        if h.text_encoder_lr is not None:
            group["lr"] = h.text_encoder_lr
        groups.append(group)
    optimizer = module.optimizer_factory(groups)
    total = int(module.trainer.estimated_stepping_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(h.lr_schedule, h.lr_warmup_steps, total)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
