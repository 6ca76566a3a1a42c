"""Side effects of a run, on rank zero, inside the run's directory: per-epoch LoRA files and samples."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from bespoke_pl.contact_sheet import contact_sheet, read_epoch_rows
from bespoke_pl.data import training_pairs
from bespoke_pl.demo_style import demo_measures
from bespoke_pl.faults import OutputError, write_failure
from bespoke_pl.generate import read_prompts
from bespoke_pl.lora import lora_weights
from bespoke_pl.lora_files import save_lora_file
from bespoke_pl.lora_metadata import training_metadata
from bespoke_pl.metrics import PixelArtQuality
from bespoke_pl.palette import snap_and_lock
from bespoke_pl.pixels import image_grid, palette_of, upscale_nearest
from bespoke_pl.preflight import check_run_folder

log = logging.getLogger(__name__)


def run_dir(trainer: L.Trainer) -> Path:
    """The run's directory (the logger's version folder, e.g. ``logs/bespoke/version_0``).

    ``Trainer.log_dir`` is a collective under DDP (rank zero broadcasts it): call this on every rank,
    as the callbacks do in ``setup``, never inside a rank-zero-only branch.
    """
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
        format: ``kohya`` (sd-scripts' format, which ComfyUI, A1111/Forge and diffusers all load) or
            ``diffusers`` (diffusers/PEFT naming for ``load_lora_weights``; the only one that holds DoRA).
    """

    def __init__(
        self,
        output_name: str = "bespoke",
        save_dtype: Literal["float16", "bfloat16", "float32"] = "float16",
        every_n_epochs: int = 1,
        format: Literal["kohya", "diffusers"] = "kohya",
    ) -> None:
        self.output_name = output_name
        self.save_dtype = save_dtype
        self.every_n_epochs = every_n_epochs
        self.format = format
        self.started = time.time()
        self.session_id = random.randint(0, 2**31 - 1)  # kohya's ss_session_id: which run a file came from

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.run_dir = run_dir(trainer)

    def path_for(self, trainer: L.Trainer, epoch: int) -> Path:
        return self.run_dir / f"{self.output_name}-{epoch:06d}.safetensors"

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
        # Refuse before training, not after the first epoch's compute.
        if self.format == "kohya" and pl_module.hparams.get("use_dora"):
            raise ValueError(
                "kohya's LoRA format cannot hold DoRA (use_dora: true); set --save_lora.format diffusers"
            )
        if trainer.is_global_zero:
            check_run_folder(self.run_dir, resuming=trainer.ckpt_path is not None)

    def metadata(self, trainer: L.Trainer, module: L.LightningModule, epoch: int) -> dict[str, str]:
        return training_metadata(trainer, module, self.output_name, epoch, self.started, self.session_id)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last:
            return
        if trainer.is_global_zero:
            path = self.free_path_for(trainer, epoch)
            parts = {name: lora_weights(model) for name, model in pl_module.lora_components().items()}
            metadata = self.metadata(trainer, pl_module, epoch)
            dtype = getattr(torch, self.save_dtype)
            try:
                save_lora_file(
                    path, parts, pl_module.family, pl_module.unet.config, metadata, self.format, dtype
                )
            except (OSError, FloatingPointError) as error:  # disk full, no permission, diverged weights
                earlier = sorted(self.run_dir.glob(f"{self.output_name}-*.safetensors"))
                raise OutputError(write_failure(path, error, earlier)) from error
            log.info("saved LoRA for epoch %d: %s (%.1f MB)", epoch, path, path.stat().st_size / 1e6)
        trainer.strategy.barrier("save_lora")


class SampleImages(L.Callback):
    """Generate sample images every N epochs with fixed seeds, save them, measure them and log to TensorBoard.

    Images are generated at 24 * pixel_scale px (``-raw.png``), snapped to the 24x24 art grid (the colour
    most of each k x k block agrees on, ``-snapped.png``) and locked to the training palette (nearest colour
    in OKLab): the result is ``samples/epoch-000001/00-seed42.png`` plus a nearest-upscaled ``-preview.png``.
    Pixel-art metrics (:class:`bespoke_pl.metrics.PixelArtQuality`) of the raw and the final images are
    logged as ``quality/raw/*`` and ``quality/art/*``, and ``contact_sheet.png`` in the run folder gets one
    row per sampled epoch.

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
        preview_scale: Nearest-upscale factor of the preview PNGs, the TensorBoard grid and the contact sheet.
        snap: Reduce each k x k block to one art pixel (off: the final image stays at 24k px).
        palette_lock: Replace every pixel by the nearest training-palette colour (OKLab).
        metrics: Measure the samples (colours, palette, grid, head shape, copies) and log the values.
        colour_range: Inclusive colour count of a good image, for ``quality/*/colours_in_range``.
        kid: Also log KID against the training images (download-free features; noisy with few samples).
        contact_sheet: Keep ``contact_sheet.png`` (one row per sampled epoch) and log it to TensorBoard.
        demo_measures: Also log ``demo/neon_share``, ``demo/base_share`` (which demo style drew each face)
            and ``demo/background_match`` (the prompted background came out), judged on the snapped art
            before the palette lock; meaningful for the demo punks only (``configs/demo.yaml``).
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
        snap: bool = True,
        palette_lock: bool = True,
        metrics: bool = True,
        colour_range: tuple[int, int] = (35, 50),
        kid: bool = False,
        contact_sheet: bool = True,
        demo_measures: bool = False,
    ) -> None:
        self.prompts = list(prompts or []) + (read_prompts(None, prompts_file) if prompts_file else [])
        self.num_prompts = num_prompts
        self.seed = seed
        self.every_n_epochs = every_n_epochs
        self.sample_at_start = sample_at_start
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.negative_prompt = negative_prompt
        self.sampler = sampler
        self.preview_scale = preview_scale
        self.snap = snap
        self.palette_lock = palette_lock
        self.metrics = metrics
        self.colour_range = tuple(colour_range)
        self.kid = kid
        self.contact_sheet = contact_sheet
        self.demo_measures = demo_measures
        self.quality: dict[str, PixelArtQuality] = {}

    def training_images(self, trainer: L.Trainer) -> torch.Tensor | None:
        pairs = training_pairs(trainer)
        return pairs.images if pairs is not None else None

    def resolve_prompts(self, trainer: L.Trainer) -> list[str]:
        if self.prompts:
            return self.prompts
        pairs = training_pairs(trainer)
        captions = list(dict.fromkeys(pairs.captions)) if pairs is not None else []
        return captions[: self.num_prompts] or ["pixel art, 24x24, portrait of bespoke punk"]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.run_dir = run_dir(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.sample_at_start and self.every_n_epochs and trainer.current_epoch == 0:
            self.sample(trainer, pl_module, epoch=0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            self.sample(trainer, pl_module, epoch)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        values: dict[str, float] = {}
        if trainer.is_global_zero:
            prompts = self.resolve_prompts(trainer)
            seeds = [self.seed + i for i in range(len(prompts))]
            started = time.perf_counter()
            raw, reduced = pl_module.sample(
                prompts, seeds, self.negative_prompt, self.steps, self.guidance_scale, self.sampler
            )
            k = pl_module.hparams.pixel_scale
            train = self.training_images(trainer)
            palette = palette_of(train) if self.palette_lock and train is not None else None
            snapped = reduced if self.snap else raw  # reduced: the k x k blocks, by reduce_blocks
            art = snap_and_lock(snapped, 1, palette)
            folder = self.run_dir / "samples" / f"epoch-{epoch:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            previews = upscale_nearest(art, max(1, self.preview_scale * 24 // art.shape[-1]))
            for i, seed in enumerate(seeds):
                stem = folder / f"{i:02d}-seed{seed}"
                save_png(art[i], stem.with_name(stem.name + ".png"))
                save_png(previews[i], stem.with_name(stem.name + "-preview.png"))
                save_png(raw[i], stem.with_name(stem.name + "-raw.png"))
                if self.snap and palette is not None:
                    save_png(snapped[i], stem.with_name(stem.name + "-snapped.png"))
            (folder / "prompts.json").write_text(
                json.dumps(dict(zip(map(str, seeds), prompts, strict=True)), indent=1)
            )
            for experiment in self._tensorboards(trainer):
                experiment.add_image("samples/art", image_grid(previews), trainer.global_step)
                experiment.add_image("samples/raw", image_grid(raw), trainer.global_step)
            if self.metrics and train is not None:
                values = self.measure(train, k, raw, art)
            if self.demo_measures:
                values |= {f"demo/{name}": v for name, v in demo_measures(reduced, prompts).items()}
            if self.contact_sheet:
                self.write_contact_sheet(trainer)
            self.last_samples = (raw, art)
            log.info(
                "epoch %d: %d samples in %s (%.1fs)%s",
                epoch,
                len(art),
                folder,
                time.perf_counter() - started,
                quality_lines(values),
            )
        values = trainer.strategy.broadcast(values, src=0)
        if values and epoch == 0:
            # Before training Lightning would fold these into epoch 1's values; write them as they are.
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)
        elif values:
            # Every rank logs the same numbers, so a ModelCheckpoint may monitor e.g. quality/art/torso_share.
            pl_module.log_dict(values, on_step=False, on_epoch=True, sync_dist=False)
        trainer.strategy.barrier("sample_images")

    def measure(self, train: torch.Tensor, k: int, raw: torch.Tensor, art: torch.Tensor) -> dict[str, float]:
        """The quality metrics of the raw and the final images, as ``quality/{raw,art}/<name>`` floats."""
        if not self.quality:
            # Only rank zero samples, so the metrics must not wait for the other processes to sync.
            options = {"colour_range": self.colour_range, "kid": self.kid, "sync_on_compute": False}
            self.quality = {
                "raw": PixelArtQuality(train, k, prefix="quality/raw/", **options),
                "art": PixelArtQuality(
                    train, art.shape[-1] // train.shape[-1], prefix="quality/art/", **options
                ),
            }
        values = {}
        for stage, images in (("raw", raw), ("art", art)):
            metric = self.quality[stage].to(images.device)
            metric.reset()
            metric.update(images)
            values |= {name: float(value) for name, value in metric.compute().items()}
        return values

    def write_contact_sheet(self, trainer: L.Trainer) -> None:
        sheet = contact_sheet(read_epoch_rows(self.run_dir / "samples"), cell=24 * self.preview_scale)
        save_png(sheet, self.run_dir / "contact_sheet.png")
        for experiment in self._tensorboards(trainer):
            experiment.add_image("samples/contact_sheet", sheet, trainer.global_step)

    @staticmethod
    def _tensorboards(trainer: L.Trainer):
        return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def quality_lines(values: dict[str, float]) -> str:
    """``quality/raw/x`` ... as one indented log line per stage: ``raw: colours=576 grid_fidelity=0.1 ...``."""
    lines = []
    for stage in ("raw", "art", "demo"):
        pairs = [
            f"{name.rsplit('/', 1)[-1]}={v:.3g}"
            for name, v in values.items()
            if f"/{stage}/" in name or name.startswith(f"{stage}/")
        ]
        if pairs:
            lines.append(f"\n  {stage}: " + " ".join(pairs))
    return "".join(lines)
