"""Schedule-free optimizers (Defazio et al. 2024, "The Road Less Scheduled"; the ``schedulefree`` package):
the weights are the averaged point x everywhere but inside a training step.

Such an optimizer keeps three sequences: z (the base optimizer's iterate), x (the running average of z,
the weights to evaluate and keep) and y = (1 - beta1) z + beta1 x, where gradients are taken. The
parameters hold one of them: y after ``optimizer.train()``, x after ``optimizer.eval()``; ``step()``
refuses to run in eval mode. The package leaves the calls to the training loop.

Here the module switches to y when a training batch starts and back to x right after each optimizer
step, in :meth:`~bespoke_pl.training.module.PixelLoRAModule.optimizer_step`, a module hook that runs
before any callback's ``on_train_batch_end``. So every reader of the weights (the epoch's LoRA file and
samples in ``on_train_epoch_end``, validation, EMA, checkpoints at a step or an epoch's end) sees x,
whatever order the callbacks run in. Between batches that accumulate gradients the weights stay at y
(no step has made a new x); a checkpoint taken there holds y with the optimizer marked in train mode,
which resumes exactly all the same. Optimizers without ``train``/``eval`` (AdamW, Prodigy, ...) are left
alone; the closure variants (``AdamWScheduleFreeClosure``) keep x outside ``step`` by themselves.
"""

from __future__ import annotations

import torch


def has_modes(optimizer: torch.optim.Optimizer | None) -> bool:
    """True for an optimizer with schedule-free ``train()`` / ``eval()`` modes (torch's have none)."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def to_training_point(optimizer: torch.optim.Optimizer | None) -> None:
    """Parameters to y, where the next gradients are taken (a no-op when already there)."""
    if has_modes(optimizer):
        optimizer.train()


def to_averaged_point(optimizer: torch.optim.Optimizer | None) -> None:
    """Parameters to x, the weights to evaluate, sample and save (a no-op when already there)."""
    if has_modes(optimizer):
        optimizer.eval()
