"""Side effects of a run, on rank zero, inside the run's directory: per-epoch LoRA files and samples."""

from __future__ import annotations

import contextlib
import json
import logging
import time

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from bespoke_pl.callbacks.ema import find_ema
from bespoke_pl.callbacks.faults import write_file
from bespoke_pl.callbacks.run_folder import run_dir, save_png
from bespoke_pl.data.datamodule import training_pairs
from bespoke_pl.data.demo_style import demo_measures
from bespoke_pl.data.pairs import PixelPairs
from bespoke_pl.data.prompts import read_prompts
from bespoke_pl.diffusion.sampling import Sampler
from bespoke_pl.pixelart.contact_sheet import contact_sheet, read_epoch_rows
from bespoke_pl.pixelart.grid import image_grid, upscale_nearest
from bespoke_pl.pixelart.metrics import COLOUR_RANGE, PixelArtQuality
from bespoke_pl.pixelart.snap import reduce_to_grid, to_art

log = logging.getLogger(__name__)


class SampleImages(L.Callback):
    """Generate sample images every N epochs with fixed seeds, save them, measure them and log to TensorBoard.

    Images are generated at 24 * pixel_scale px (``-raw.png``), snapped to the 24x24 art grid (the colour
    most of each k x k block agrees on, ``-snapped.png``) and locked to the training palette (nearest colour
    in OKLab): the result is ``samples/epoch-000001/00-seed42.png`` plus a nearest-upscaled ``-preview.png``.
    Pixel-art metrics (:class:`bespoke_pl.pixelart.metrics.PixelArtQuality`) of the raw and the final images are
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
        palette_lock: Replace every pixel by the nearest training-palette colour (sRGB distance, measured best: docs/snap.md).
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
        sampler: Sampler = "euler",
        preview_scale: int = 8,
        snap: bool = True,
        palette_lock: bool = True,
        metrics: bool = True,
        colour_range: tuple[int, int] = COLOUR_RANGE,
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
            ema = find_ema(trainer)
            with ema.applied(pl_module, ema.use_for_samples) if ema else contextlib.nullcontext():
                raw = pl_module.sample(
                    prompts, seeds, self.negative_prompt, self.steps, self.guidance_scale, self.sampler
                )
            k = pl_module.hparams.pixel_scale
            pairs = training_pairs(trainer)
            palette = pairs.palette if self.palette_lock and pairs is not None else None
            snapped, art = to_art(raw, k, palette, self.snap)
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
            text = json.dumps(dict(zip(map(str, seeds), prompts, strict=True)), indent=1)
            write_file(folder / "prompts.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
            for experiment in self._tensorboards(trainer):
                experiment.add_image("samples/art", image_grid(previews), trainer.global_step)
                experiment.add_image("samples/raw", image_grid(raw), trainer.global_step)
            # The measures judge the 24x24 grid, also when the saved images stay at 24k px (snap off).
            grid, art_grid = (snapped, art) if self.snap else (reduce_to_grid(raw, k), reduce_to_grid(art, k))
            if self.metrics and pairs is not None:
                values = self.measure(pairs, k, raw, grid, art_grid)
            if self.demo_measures:
                values |= {f"demo/{name}": v for name, v in demo_measures(grid, prompts).items()}
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

    def measure(
        self, pairs: PixelPairs, k: int, raw: torch.Tensor, snapped: torch.Tensor, art: torch.Tensor
    ) -> dict[str, float]:
        """The quality metrics as ``quality/{raw,art}/<name>`` floats: ``raw`` judges what the model drew
        (the snapped grid, and the decodes for grid fidelity), ``art`` the final, palette-locked images."""
        train = pairs.images
        if not self.quality:
            # Only rank zero samples, so the metrics must not wait for the other processes to sync.
            options = {"colour_range": self.colour_range, "kid": self.kid, "sync_on_compute": False}
            options["palette"] = pairs.palette
            self.quality = {
                "raw": PixelArtQuality(train, k, prefix="quality/raw/", **options),
                "art": PixelArtQuality(train, prefix="quality/art/", **options),
            }
        values = {}
        for stage, grid, decoded in (("raw", snapped, raw), ("art", art, None)):
            metric = self.quality[stage].to(grid.device)
            metric.reset()
            metric.update(grid, raw=decoded)
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
