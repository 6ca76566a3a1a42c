"""Side effects of a run, on rank zero, inside the run's directory: per-epoch LoRA files and samples."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from bespoke_pl.faults import OutputError, write_failure
from bespoke_pl.lora_files import (
    DIFFUSERS_METADATA_KEY,
    atomic_save_safetensors,
    diffusers_adapter_metadata,
    diffusers_tensors,
)
from bespoke_pl.pixels import image_grid, upscale_nearest
from bespoke_pl.preflight import check_run_folder

log = logging.getLogger(__name__)


def run_dir(trainer: L.Trainer) -> Path:
    """The run's directory (the logger's version folder, e.g. ``logs/bespoke/version_0``)."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def save_png(image: torch.Tensor, path: Path) -> None:
    """Save a uint8 (3, H, W) tensor as an RGB PNG (lossless: colours are kept exactly)."""
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy(), "RGB").save(path)


class SaveLoRAEveryEpoch(L.Callback):
    """Write the LoRA after every epoch as ``{output_name}-{epoch:06d}.safetensors`` (epochs from 1).

    Args:
        output_name: File name stem of the LoRA files.
        save_dtype: Dtype of the saved weights (float16 halves the file; training stays float32).
        every_n_epochs: Save every N epochs (the last epoch is always saved).
    """

    def __init__(
        self,
        output_name: str = "bespoke",
        save_dtype: Literal["float16", "bfloat16", "float32"] = "float16",
        every_n_epochs: int = 1,
    ) -> None:
        self.output_name = output_name
        self.save_dtype = save_dtype
        self.every_n_epochs = every_n_epochs
        self.started = time.time()

    def path_for(self, trainer: L.Trainer, epoch: int) -> Path:
        return run_dir(trainer) / f"{self.output_name}-{epoch:06d}.safetensors"

    def free_path_for(self, trainer: L.Trainer, epoch: int) -> Path:
        """``path_for``, or ``...-000003-1.safetensors`` etc. if taken: a finished file is never replaced.

        It can exist when a run resumes from a checkpoint older than an epoch's file (an explicit older
        ``--ckpt_path``, or a kill between the file and the epoch-end checkpoint).
        """
        path = self.path_for(trainer, epoch)
        n = 0
        while path.exists():
            n += 1
            path = path.with_name(f"{self.output_name}-{epoch:06d}-{n}.safetensors")
        if n:
            log.warning("%s exists; keeping it and writing %s", self.path_for(trainer, epoch).name, path.name)
        return path

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            check_run_folder(run_dir(trainer), resuming=trainer.ckpt_path is not None)

    def metadata(self, trainer: L.Trainer, module: L.LightningModule, epoch: int) -> dict[str, str]:
        h = module.hparams
        keep = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_dora")
        configs = {
            name: {k: v for k, v in model.peft_config["default"].to_dict().items() if k in keep}
            for name, model in module.lora_components().items()
        }
        return {
            "format": "pt",
            DIFFUSERS_METADATA_KEY: diffusers_adapter_metadata(configs),
            "ss_output_name": self.output_name,
            "ss_base_model_version": "sdxl_base_v1-0" if module.family == "sdxl" else "sd_v1",
            "ss_network_dim": str(h.rank),
            "ss_network_alpha": str(h.alpha),
            "ss_clip_skip": str(h.clip_skip),
            "ss_epoch": str(epoch),
            "ss_steps": str(trainer.global_step),
            "ss_training_started_at": str(self.started),
            "bespoke_pl.pixel_scale": str(h.pixel_scale),
            "bespoke_pl.resolution": str(h.resolution),
            "bespoke_pl.hparams": json.dumps(dict(h), default=str),
        }

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last:
            return
        if trainer.is_global_zero:
            path = self.free_path_for(trainer, epoch)
            tensors = diffusers_tensors(pl_module.lora_state_dicts(), getattr(torch, self.save_dtype))
            try:
                atomic_save_safetensors(tensors, path, self.metadata(trainer, pl_module, epoch))
            except (OSError, FloatingPointError) as error:  # disk full, no permission, diverged weights
                earlier = sorted(run_dir(trainer).glob(f"{self.output_name}-*.safetensors"))
                raise OutputError(write_failure(path, error, earlier)) from error
            log.info("saved LoRA for epoch %d: %s (%.1f MB)", epoch, path, path.stat().st_size / 1e6)
        trainer.strategy.barrier("save_lora")


class SampleImages(L.Callback):
    """Generate sample images every N epochs with fixed seeds, save them and log a grid to TensorBoard.

    Images are generated at 24 * pixel_scale px, reduced to the 24x24 art grid (most common colour of each
    k x k block) and saved as ``samples/epoch-000001/00-seed42.png`` plus a nearest-upscaled preview.

    Args:
        prompts: Prompts to sample; unset: the first ``num_prompts`` distinct training captions.
        prompts_file: A text file with one prompt per line (added to ``prompts``).
        num_prompts: How many training captions to use when no prompts are given.
        seed: Seed of the first image; image i uses ``seed + i`` every epoch, so epochs compare.
        every_n_epochs: Sample after every N epochs (0 disables sampling).
        sample_at_start: Also sample before training (saved as epoch 0).
        steps: Denoising steps.
        guidance_scale: Classifier-free guidance scale.
        negative_prompt: Negative prompt.
        sampler: Sampling scheduler: euler, euler_a, ddim or dpmpp_2m.
        preview_scale: Nearest-upscale factor of the preview PNGs and the TensorBoard grid.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        prompts_file: str | None = None,
        num_prompts: int = 4,
        seed: int = 42,
        every_n_epochs: int = 1,
        sample_at_start: bool = False,
        steps: int = 20,
        guidance_scale: float = 5.0,
        negative_prompt: str = "",
        sampler: Literal["euler", "euler_a", "ddim", "dpmpp_2m"] = "euler",
        preview_scale: int = 8,
    ) -> None:
        self.prompts = list(prompts or [])
        if prompts_file:
            lines = Path(prompts_file).expanduser().read_text(encoding="utf-8").splitlines()
            self.prompts += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        self.num_prompts = num_prompts
        self.seed = seed
        self.every_n_epochs = every_n_epochs
        self.sample_at_start = sample_at_start
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.negative_prompt = negative_prompt
        self.sampler = sampler
        self.preview_scale = preview_scale

    def resolve_prompts(self, trainer: L.Trainer) -> list[str]:
        if self.prompts:
            return self.prompts
        pairs = getattr(trainer.datamodule, "pairs", None) if trainer.datamodule is not None else None
        captions = list(dict.fromkeys(pairs.captions)) if pairs is not None else []
        return captions[: self.num_prompts] or ["pixel art, 24x24, portrait of bespoke punk"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.sample_at_start and self.every_n_epochs and trainer.current_epoch == 0:
            self.sample(trainer, pl_module, epoch=0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            self.sample(trainer, pl_module, epoch)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        if trainer.is_global_zero:
            prompts = self.resolve_prompts(trainer)
            seeds = [self.seed + i for i in range(len(prompts))]
            started = time.perf_counter()
            raw, art = pl_module.sample(
                prompts, seeds, self.negative_prompt, self.steps, self.guidance_scale, self.sampler
            )
            folder = run_dir(trainer) / "samples" / f"epoch-{epoch:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            previews = upscale_nearest(art, self.preview_scale)
            for i, (seed, image, preview) in enumerate(zip(seeds, art, previews, strict=True)):
                save_png(image, folder / f"{i:02d}-seed{seed}.png")
                save_png(preview, folder / f"{i:02d}-seed{seed}-preview.png")
            (folder / "prompts.json").write_text(
                json.dumps(dict(zip(map(str, seeds), prompts, strict=True)), indent=1)
            )
            for experiment in self._tensorboards(trainer):
                experiment.add_image("samples/art", image_grid(previews), trainer.global_step)
                experiment.add_image("samples/raw", image_grid(raw), trainer.global_step)
            self.last_samples = (raw, art)
            log.info(
                "epoch %d: %d samples in %s (%.1fs)", epoch, len(art), folder, time.perf_counter() - started
            )
        trainer.strategy.barrier("sample_images")

    @staticmethod
    def _tensorboards(trainer: L.Trainer):
        return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
