"""The LoRA after every epoch, as ``NAME-000001.safetensors`` ... in kohya's (or diffusers') format."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from bespoke_pl.callbacks.ema import FILE_SUFFIX as EMA_SUFFIX
from bespoke_pl.callbacks.ema import find_ema
from bespoke_pl.callbacks.faults import write_failure
from bespoke_pl.callbacks.run_folder import check_run_folder, run_dir
from bespoke_pl.data.datamodule import pixel_data
from bespoke_pl.errors import OutputError
from bespoke_pl.lora.export import (
    DEFAULT_MAX_ERROR,
    DORA_LOADERS,
    export_header,
    export_plain,
    plain_path,
    write_plain,
)
from bespoke_pl.lora.files import save_lora_file
from bespoke_pl.lora.inject import lora_weights
from bespoke_pl.lora.loading import read_lora_file
from bespoke_pl.lora.metadata import RunFacts, training_metadata

log = logging.getLogger(__name__)


class SaveLoRAEveryEpoch(L.Callback):
    """Write the LoRA after every epoch as ``{output_name}-{epoch:06d}.safetensors`` (epochs from 1).

    Args:
        output_name: File name stem of the LoRA files.
        save_dtype: Dtype of the saved weights (float16 halves the file; training stays float32).
        every_n_epochs: Save every N epochs (the last epoch is always saved).
        format: ``kohya`` (sd-scripts' format, which ComfyUI, A1111/Forge and diffusers all load; LyCORIS'
            keys for LoHa and LoKr, which diffusers refuses, and DoRA's ``dora_scale``, which diffusers
            drops and others misapply: see docs/lora-export.md) or ``diffusers``
            (diffusers/PEFT naming for ``load_lora_weights``; holds LoRA and DoRA, not LoHa / LoKr).
        export_plain: With DoRA, also write each file as a plain LoRA beside it
            (``NAME-000001-plain.safetensors``, ``python -m bespoke_pl export``'s default bound), which the
            loaders that misapply DoRA (ComfyUI, Forge, A1111, InvokeAI, diffusers) apply as trained.
    """

    def __init__(
        self,
        output_name: str = "bespoke",
        save_dtype: Literal["float16", "bfloat16", "float32"] = "float16",
        every_n_epochs: int = 1,
        format: Literal["kohya", "diffusers"] = "kohya",
        export_plain: bool = True,
    ) -> None:
        self.output_name = output_name
        self.save_dtype = save_dtype
        self.every_n_epochs = every_n_epochs
        self.format = format
        self.export_plain = export_plain
        self.started = time.time()
        self.session_id = random.randint(0, 2**31 - 1)  # kohya's ss_session_id: which run a file came from

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.run_dir = run_dir(trainer)

    def path_for(self, trainer: L.Trainer, epoch: int, suffix: str = "") -> Path:
        return self.run_dir / f"{self.output_name}-{epoch:06d}{suffix}.safetensors"

    def free_path_for(self, trainer: L.Trainer, epoch: int, suffix: str = "") -> Path:
        """``path_for``, or ``...-000003-1.safetensors`` etc. if taken: a finished file is never replaced.

        It can exist when a run resumes from a checkpoint older than an epoch's file (an explicit older
        ``--ckpt_path``, or a kill between the file and the epoch-end checkpoint).
        """
        path = self.path_for(trainer, epoch, suffix)
        n = 0
        while path.exists():
            n += 1
            path = path.with_name(f"{self.output_name}-{epoch:06d}-{n}{suffix}.safetensors")
        if n:
            log.warning(
                "%s exists; keeping it and writing %s", self.path_for(trainer, epoch, suffix).name, path.name
            )
        return path

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Refuse before training, not after the first epoch's compute.
        network = pl_module.hparams.get("network", "lora")
        if self.format == "diffusers" and network != "lora":
            raise ValueError(
                f"diffusers' LoRA format cannot hold LoHa / LoKr (model.network: {network}); "
                "set --save_lora.format kohya"
            )
        if trainer.is_global_zero:
            check_run_folder(self.run_dir, resuming=trainer.ckpt_path is not None)

    def metadata(self, trainer: L.Trainer, module: L.LightningModule, epoch: int) -> dict[str, str]:
        data = pixel_data(trainer)
        pairs = data.training_pairs() if data is not None else None
        run = RunFacts(
            steps=trainer.global_step,
            num_epochs=trainer.max_epochs,
            max_train_steps=trainer.estimated_stepping_batches,
            batches_per_epoch=trainer.num_training_batches,
            gradient_accumulation=trainer.accumulate_grad_batches,
            max_grad_norm=trainer.gradient_clip_val,
            precision=trainer.precision,
            optimizer=trainer.optimizers[0] if trainer.optimizers else None,
            data=dict(trainer.datamodule.hparams) if trainer.datamodule is not None else {},
            folder=data.root_path.name if data is not None else "unknown",
        )
        return training_metadata(run, module, self.output_name, epoch, self.started, self.session_id, pairs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last:
            return
        if trainer.is_global_zero:
            self.write(trainer, pl_module, epoch)
            ema = find_ema(trainer)
            if ema is not None and ema.save:
                with ema.applied(pl_module):
                    self.write(
                        trainer, pl_module, epoch, EMA_SUFFIX, {"bespoke_pl.ema_decay": str(ema.decay)}
                    )
        trainer.strategy.barrier("save_lora")

    def write(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int, suffix: str = "", extra=None
    ) -> None:
        """Write the module's LoRA as this epoch's file (``suffix``: ``-ema`` for the averaged weights)."""
        path = self.free_path_for(trainer, epoch, suffix)
        parts = {name: lora_weights(model) for name, model in pl_module.lora_components().items()}
        metadata = self.metadata(trainer, pl_module, epoch) | (extra or {})
        dtype = getattr(torch, self.save_dtype)
        try:
            save_lora_file(path, parts, pl_module.family, pl_module.unet.config, metadata, self.format, dtype)
        except (OSError, FloatingPointError) as error:  # disk full, no permission, diverged weights
            earlier = sorted(self.run_dir.glob(f"{self.output_name}-*.safetensors"))
            raise OutputError(write_failure(path, error, earlier)) from error
        log.info("saved LoRA for epoch %d: %s (%.1f MB)", epoch, path, path.stat().st_size / 1e6)
        if pl_module.hparams.get("use_dora"):
            self.write_plain(pl_module, path)

    def write_plain(self, pl_module: L.LightningModule, path: Path) -> None:
        """The DoRA file ``path`` as a plain LoRA beside it (or the command that makes one), and one log line
        on which loaders misapply DoRA."""
        if not self.export_plain:
            log.info("%s is DoRA: %s; python -m bespoke_pl export %s --to lora writes a plain LoRA they "
                     "apply as trained", path.name, DORA_LOADERS, path)  # fmt: skip
            return
        lora = read_lora_file(path)  # the file as written (its dtype), merged as generate merges it
        target = plain_path(path)
        plain = export_plain(lora, pl_module.lora_components(), pl_module.family)
        try:
            write_plain(
                target, plain, export_header(lora.metadata, plain, path.name, DEFAULT_MAX_ERROR, None)
            )
        except FileExistsError:  # another run's file of that name: keep it, as for the epoch files
            log.warning("%s exists; not replacing it with %s's plain export", target.name, path.name)
            return
        except (OSError, FloatingPointError) as error:
            raise OutputError(write_failure(target, error, [path])) from error
        log.info("%s is DoRA: %s; for them use %s (%s)", path.name, DORA_LOADERS, target.name,
                 plain.summary(DEFAULT_MAX_ERROR))  # fmt: skip
