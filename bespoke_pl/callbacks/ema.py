"""An exponential moving average (EMA) of the LoRA weights, kept beside the trained ones.

After every optimizer step, ``ema = d * ema + (1 - d) * weights``. On a data set of 200 images the weights
of the last step carry the noise of the last few batches; their average over the last ~1 / (1 - d) steps
is a smoother model, often the better one to ship (OneTrainer, SimpleTuner and ai-toolkit offer it).

Only the LoRA parameters are averaged (a few MB), in float32. Under DDP every process holds the same weights
after a step, so each keeps the same average (validation, spread over the processes, measures one model);
rank zero alone writes the files, samples and checkpoints. The average is part of the resumable checkpoint,
so a resumed run continues the same average.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import lightning as L
import torch

log = logging.getLogger(__name__)

FILE_SUFFIX = "-ema"  # NAME-000003-ema.safetensors beside NAME-000003.safetensors


def ema_decay(decay: float, updates: int, warmup: bool) -> float:
    """The decay of update number ``updates`` (0-based): ``decay``, or with warmup at most
    ``(1 + n) / (10 + n)``, so that the first steps, whose average would still be mostly the zero-initialised
    start, count for more (0.1 at the first update, 0.9 at the 80th, 0.99 at the 890th)."""
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


def start_average(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The average before its first update: a float32 copy of ``params``."""
    return [p.detach().float().clone() for p in params]


def update_average(average: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """One update, in place: ``average = decay * average + (1 - decay) * params`` (the trainer's LoRA
    weights, and the tiny bases' whole UNet and text encoders, :mod:`bespoke_pl.tinybases.unet`)."""
    with torch.no_grad():
        torch._foreach_lerp_(average, [p.detach() for p in params], 1.0 - decay)


class LoRAEMA(L.Callback):
    """EMA of the trained LoRA weights: its own per-epoch file, and optionally the samples and validation.

    Args:
        decay: Weight of the running average per optimizer step (0.999 averages over roughly the last 1,000
            steps; 0.99 over 100: choose one well below the run's length). Unset: no EMA.
        warmup: Start with a smaller decay, ``min(decay, (1 + n) / (10 + n))`` at update n, so early steps
            are not drowned in the initial weights.
        save: Write ``NAME-000003-ema.safetensors`` beside each epoch's LoRA file.
        use_for_samples: Draw the per-epoch samples with the EMA weights instead of the trained ones.
        use_for_validation: Measure ``val/loss`` with the EMA weights.
    """

    def __init__(
        self,
        decay: float | None = None,
        warmup: bool = True,
        save: bool = True,
        use_for_samples: bool = False,
        use_for_validation: bool = False,
    ) -> None:
        if decay is not None and not 0 < decay < 1:
            raise ValueError(f"ema.decay must be in (0, 1), got {decay}")
        self.decay, self.warmup, self.save = decay, warmup, save
        self.use_for_samples, self.use_for_validation = use_for_samples, use_for_validation
        self.shadow: list[torch.Tensor] | None = None
        self.params: list[torch.nn.Parameter] = []  # the module's trainable parameters, listed once per fit
        self.updates = 0
        self._last_step = -1
        self._pending: dict | None = None

    @property
    def active(self) -> bool:
        return self.decay is not None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        params = self.params = pl_module.trainable_parameters()
        if self._pending is not None:  # resumed: the checkpoint was read before this hook
            saved = self._pending["shadow"]
            if len(saved) != len(params) or any(
                s.shape != p.shape for s, p in zip(saved, params, strict=False)
            ):
                raise ValueError("the checkpoint's EMA weights do not match this run's LoRA layout")
            self.shadow = [s.to(p.device, torch.float32) for s, p in zip(saved, params, strict=True)]
            self.updates = self._pending["updates"]
            self._pending = None
        else:
            self.shadow = start_average(params)
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Once per optimizer step: with gradient accumulation a batch that did not step leaves it alone.
        if self.shadow is None or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        # LoRA parameters train in float32, as the average is kept
        update_average(self.shadow, self.params, ema_decay(self.decay, self.updates, self.warmup))
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, pl_module: L.LightningModule, when: bool = True) -> Iterator[None]:
        """Inside, the module's LoRA parameters hold the EMA weights; afterwards the trained ones again."""
        if not when or self.shadow is None:
            yield
            return
        params = pl_module.trainable_parameters()
        trained = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, s in zip(params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(params, trained, strict=True):
                    p.copy_(t)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.use_for_validation and self.shadow is not None:
            self._validating = self.applied(pl_module)
            self._validating.__enter__()

    def on_validation_end(self, trainer, pl_module) -> None:
        validating = getattr(self, "_validating", None)
        if validating is not None:
            self._validating = None
            validating.__exit__(None, None, None)

    def state_dict(self) -> dict:
        if self.shadow is None:
            return {}
        return {"shadow": [s.detach().cpu() for s in self.shadow], "updates": self.updates}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict or None


def find_ema(trainer: L.Trainer) -> LoRAEMA | None:
    """The run's active EMA callback, if any."""
    return next((c for c in trainer.callbacks if isinstance(c, LoRAEMA) and c.active), None)
