"""The optimizer of a LoRA run: parameter groups per part (UNet, text encoders) and per LoRA+ matrix, and
the LR schedule."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from bespoke_pl.errors import ConfigError
from bespoke_pl.lora.inject import lora_parameters

# peft names a LoRA's up matrix lora_B (kohya: lora_up); LoRA+ trains it faster than the down matrix.
UP_MATRIX = ".lora_B."
PLUS = "_plus"  # suffix of the LoRA+ groups: "unet_plus", "te_plus"


def lr_factor(kind: str, warmup: int, total: int):
    """The learning-rate multiplier per optimizer step: linear warmup, then constant, linear or cosine."""

    span = max(1, total - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = min(step - warmup, span)  # past the end: the schedule's last value
        if kind == "cosine":
            # pi * done / span, in this order: the tiny bases' recipe (bespoke_pl.tinybases) made the
            # shipped weights with exactly these floats
            return 0.5 * (1 + math.cos(math.pi * done / span))
        if kind == "linear":
            return 1.0 - done / span
        return 1.0

    return factor


def lora_groups(
    name: str, models: list[nn.Module], lr: float | None = None, loraplus_lr_ratio: float | None = None
) -> list[dict]:
    """The trainable LoRA parameters of one part as parameter groups.

    Without LoRA+ one group, ``name``; with it (Hayou et al. 2024, "LoRA+"; kohya's ``loraplus_lr_ratio``)
    the up matrices B go to a second group ``name + "_plus"`` carrying ``lr_ratio``, the rest (A, DoRA
    magnitudes) stay in ``name``, at ``lr`` (unset: the optimizer's own). The B group's rate is set by
    :func:`apply_loraplus` once the optimizer exists and has filled in its own.
    """
    # lora_parameters decides what trains (A, B, DoRA magnitudes, ...); only the B matrices are singled out.
    trainable = {id(p) for m in models for p in lora_parameters(m)}
    named = [(n, p) for m in models for n, p in m.named_parameters() if id(p) in trainable]
    faster = loraplus_lr_ratio is not None
    plus = [p for n, p in named if faster and UP_MATRIX in n]
    rest = [p for n, p in named if not (faster and UP_MATRIX in n)]
    groups = [{"params": rest, "name": name, **({"lr": lr} if lr is not None else {})}]
    if plus:
        groups.append({"params": plus, "name": name + PLUS, "lr_ratio": loraplus_lr_ratio})
    return [g for g in groups if g["params"]]


def apply_loraplus(optimizer: torch.optim.Optimizer) -> None:
    """Set each LoRA+ group's learning rate to ``lr_ratio`` x its part's (the optimizer fills in the
    part's rate from its own ``lr`` when none was given, so it is known only now)."""
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups if "lr_ratio" not in g}
    for group in optimizer.param_groups:
        if "lr_ratio" in group:
            group["lr"] = rates[group["name"].removesuffix(PLUS)] * group["lr_ratio"]


def lora_optimizer(module: L.LightningModule) -> dict:
    """``configure_optimizers`` of :class:`~bespoke_pl.training.module.PixelLoRAModule`.

    The groups are named ``unet`` and ``te`` (the LR monitor and the LoRA header read the names), and with
    ``loraplus_lr_ratio`` also ``unet_plus`` and ``te_plus`` (the B matrices); the text encoders take
    ``text_encoder_lr`` when it is set. The schedule steps per optimizer step over the whole run
    (``estimated_stepping_batches``), so resuming continues the same curve.
    """
    h = module.hparams
    ratio = h.get("loraplus_lr_ratio")
    groups = lora_groups("unet", [module.unet], None, ratio)
    if h.train_text_encoder:
        groups += lora_groups("te", list(module.text_encoders), h.text_encoder_lr, ratio)
    if ratio is not None and not any(g["name"].endswith(PLUS) for g in groups):
        raise ConfigError(
            "model.loraplus_lr_ratio is set but the network has no LoRA up matrices (lora_B) to train faster"
        )
    optimizer = module.optimizer_factory(groups)
    apply_loraplus(optimizer)
    total = int(module.trainer.estimated_stepping_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(h.lr_schedule, h.lr_warmup_steps, total)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
