"""The LightningModule: wires base model, LoRA, text conditioning and the diffusion loss; logs the loss."""

from __future__ import annotations

import logging
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable

from bespoke_pl.callbacks.progress import epoch_progress_bar
from bespoke_pl.callbacks.resume import ExactResume
from bespoke_pl.callbacks.safe_stop import SafeStop
from bespoke_pl.data.datamodule import pixel_data
from bespoke_pl.diffusion.base import load_base
from bespoke_pl.diffusion.conditioning import PromptEmbeds
from bespoke_pl.diffusion.losses import HuberSchedule, LossType
from bespoke_pl.diffusion.objective import LossOptions, add_noise, make_noise, perturb_noise, training_target
from bespoke_pl.diffusion.timesteps import TimestepSampling, sample_training_timesteps
from bespoke_pl.training.epoch_loss import EpochLoss
from bespoke_pl.training.lora_on_base import LoRAOnBase
from bespoke_pl.training.optim import lora_optimizer
from bespoke_pl.training.options import check_model_options
from bespoke_pl.training.schedule_free import to_averaged_point, to_training_point
from bespoke_pl.training.speed import build_caches, offload_frozen
from bespoke_pl.training.validation import LossSums, ValidationCaches, ValidationSteps

log = logging.getLogger(__name__)


class PixelLoRAModule(ValidationSteps, LoRAOnBase):
    """LoRA training of an SD 1.5 or SDXL base on nearest-upscaled pixel art.

    Args:
        base_model: Hub id, local diffusers folder, single ``.safetensors``/``.ckpt`` file, or
            ``tiny:sd15`` / ``tiny:sdxl`` (tiny offline models, built on first use).
        family: ``auto`` detects SD 1.5 vs SDXL from the weights; ``sd15``/``sdxl`` insists (mismatch errors).
        base_config: For a single-file base: a diffusers folder or hub id to read component configs from.
        resolution: Side of the training images in art pixels (linked from ``data.resolution``).
        pixel_scale: Nearest-upscale factor k before the VAE. 8 puts one art pixel in one latent cell
            (24 -> 192 px -> 24x24 latent); 1 trains on the literal 24x24 images (a 3x3 latent).
        clip_skip: Text-encoder layer counted from the end, kohya/A1111 numbering (1 = last). SD 1.5: that
            layer then the final layer norm. SDXL: that layer of both encoders, no final norm; 2 is standard.
        rank: LoRA rank of the UNet's attention/feed-forward layers (and text encoders).
        alpha: LoRA alpha; updates are scaled by alpha / rank.
        lora_dropout: Dropout on the LoRA branch input during training.
        conv_rank: Rank of LoRA on the ResNet/sampler convolutions (kohya's ``conv_dim``); unset: none.
        conv_alpha: Alpha of the convolution LoRA; unset: equal to ``conv_rank``.
        use_dora: Weight-decomposed LoRA (DoRA) instead of plain LoRA (``network: lora`` only).
        network: The adapter: ``lora``; ``loha`` (LyCORIS' LoHa: the elementwise product of two rank-``rank``
            LoRA updates, more expressive per parameter); ``lokr`` (LyCORIS' LoKr: a Kronecker product of a
            small full matrix and a rank-``rank`` one, far fewer parameters). All on the same layers, with
            ``conv_rank`` for the convolutions; LoHa and LoKr save in kohya/LyCORIS format only, and take
            neither ``use_dora`` nor ``lora_dropout``.
        lokr_factor: LoKr's ``factor`` (LyCORIS' name): the small Kronecker factor ``lokr_w1`` is
            factor x factor where factor divides the layer's sizes (else a smaller divisor); -1 splits each
            size near its square root.
        train_text_encoder: Also train LoRA on the text encoder(s) (both for SDXL).
        text_encoder_lr: Learning rate of the text-encoder LoRA; unset: the optimizer's.
        loraplus_lr_ratio: LoRA+ (kohya's ``loraplus_lr_ratio``): the up matrices B train at this many times
            the learning rate of their part (UNet, text encoders), in groups ``unet_plus`` / ``te_plus``;
            the paper suggests 16. Unset: one rate for both matrices.
        noise_offset: Per-channel constant added to the training noise (0 disables).
        min_snr_gamma: Min-SNR loss weighting gamma (5 is usual); unset: plain MSE.
        loss_type: ``l2`` (MSE), ``l1``, ``huber`` (pseudo-Huber) or ``smooth_l1``, as kohya's.
        huber_schedule: Huber threshold over the timesteps (kohya's): ``constant``, ``exponential``, ``snr``.
        huber_c: The Huber threshold (under a schedule: its value at pure noise), > 0.
        debiased_estimation: Weight the loss by 1 / sqrt(SNR) (v prediction: 1 / (SNR + 1)), as kohya.
        ip_noise_gamma: Input perturbation: noisy input from noise + gamma * fresh noise (0.1 usual; 0: off).
        timestep_sampling: ``uniform``, or ``logit_normal`` (SD3's: the middle timesteps more often).
        timestep_min: First timestep that may be drawn (kohya's ``min_timestep``).
        timestep_max: One past the last that may be drawn (kohya's ``max_timestep``); unset: the base's T.
        timestep_shift: SD3 shift ``s t / (1 + (s - 1) t)`` of the drawn timesteps; > 1: noisier; 1: none.
        logit_mean: Mean of ``logit_normal``'s normal; > 0 draws noisier timesteps.
        logit_std: Standard deviation of ``logit_normal``'s normal, > 0.
        zero_terminal_snr: Rescale the schedule to SNR 0 at its end (Lin et al. 2023) for training, samples
            and ``generate``; meant for v-prediction bases (an epsilon base is warned).
        weight_dtype: Dtype of the frozen UNet/text encoders; ``auto`` is bf16 (fp16) on CUDA, fp32 elsewhere.
            The VAE always runs in float32 (SDXL's VAE overflows in fp16).
        optimizer: Optimizer for the LoRA parameters (LightningCLI ``class_path`` + ``init_args``).
        lr_schedule: Learning-rate shape after warmup: constant, cosine (to 0) or linear (to 0).
        lr_warmup_steps: Optimizer steps of linear warmup from 0.
        gradient_checkpointing: Recompute UNet activations in backward to save memory.
        attention: UNet attention kernel: ``sdpa`` (PyTorch's fused scaled-dot-product attention) or
            ``classic`` (plain matmul-softmax; slower, for debugging).
        compile_unet: ``torch.compile`` the UNet (opt-in: slow first steps, faster after on CUDA).
        latent_sampling: ``mean`` encodes each image to its VAE posterior mean (cacheable); ``sample``
            draws from the posterior at every step (disables the latent cache).
        cache_latents: Encode each image once and train on the stored latents (when valid).
        latent_cache_dir: Also keep the latents on disk here, keyed by image pixels, VAE and pixel_scale.
        cache_text: Encode each caption once when the text encoders are frozen and captions fixed.
        offload_frozen: After caching, move the VAE and frozen text encoders off the accelerator;
            they come back only for sampling.
        skip_nonfinite_loss: How many batches with a NaN/inf loss may be skipped (no weight update) before
            the run stops; 0 stops at the first. Skips are logged as ``train/skipped_batches``.
        sdxl_size: The original/target size SDXL's time ids tell the UNet, in px (e.g. 1024: "a 1024 px
            image"); unset: the training size, ``resolution * pixel_scale``. Recorded in the LoRA file, so
            ``generate`` conditions the same way. SD 1.5 has no size conditioning.
        validation_timesteps: With a validation set (``data.val_split`` / ``data.val_root``): how many fixed
            timesteps, spread over the schedule, each held-out image is measured at (``val/loss``).
        validation_seed: Seeds the validation noise (fixed per image): same seed, same measure.
        validation_loss: ``objective``: the training loss (its loss type and weights); ``mse``: plain MSE of
            the prediction, the same yardstick whatever the objective options (to compare runs that differ
            in them, as ``benchmarks/ablation.py`` does).
    """

    def __init__(
        self,
        base_model: str,
        family: Literal["auto", "sd15", "sdxl"] = "auto",
        base_config: str | None = None,
        resolution: int = 24,
        pixel_scale: int = 8,
        clip_skip: int = 1,
        rank: int = 16,
        alpha: float = 16.0,
        lora_dropout: float = 0.0,
        conv_rank: int | None = None,
        conv_alpha: float | None = None,
        use_dora: bool = False,
        network: Literal["lora", "loha", "lokr"] = "lora",
        lokr_factor: int = -1,
        train_text_encoder: bool = False,
        text_encoder_lr: float | None = None,
        loraplus_lr_ratio: float | None = None,
        noise_offset: float = 0.0,
        min_snr_gamma: float | None = None,
        loss_type: LossType = "l2",
        huber_schedule: HuberSchedule = "snr",
        huber_c: float = 0.1,
        debiased_estimation: bool = False,
        ip_noise_gamma: float = 0.0,
        timestep_sampling: TimestepSampling = "uniform",
        timestep_min: int = 0,
        timestep_max: int | None = None,
        timestep_shift: float = 1.0,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        zero_terminal_snr: bool = False,
        weight_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: Literal["constant", "cosine", "linear"] = "constant",
        lr_warmup_steps: int = 0,
        gradient_checkpointing: bool = False,
        attention: Literal["sdpa", "classic"] = "sdpa",
        compile_unet: bool = False,
        latent_sampling: Literal["mean", "sample"] = "mean",
        cache_latents: bool = True,
        latent_cache_dir: str | None = None,
        cache_text: bool = True,
        offload_frozen: bool = True,
        skip_nonfinite_loss: int = 0,
        sdxl_size: int | None = None,
        validation_timesteps: int = 4,
        validation_seed: int = 0,
        validation_loss: Literal["objective", "mse"] = "objective",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer"])
        check_model_options(self.hparams)  # fit's preflight lists the same, with the other sections'
        self.optimizer_factory = optimizer
        # Frozen base weights are not part of a checkpoint (see on_save_checkpoint), so loading is lenient.
        self.strict_loading = False
        self.tokenizers = []
        self.latent_cache = self.text_cache = None  # filled in on_fit_start (family: None until built)
        self.skipped_batches = 0
        self.epoch_loss = EpochLoss()
        self.validation: ValidationCaches | None = None
        self.val_sums = LossSums.empty()

    def configure_model(self) -> None:
        if self.family is not None:
            return  # already built (configure_model runs once per fit/validate call)
        h = self.hparams
        self.attach_base(load_base(h.base_model, h.family, h.base_config))

    # ------------------------------------------------------------------------------------- training
    def compute_loss(
        self,
        latents: torch.Tensor,
        embeds: PromptEmbeds,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        plain: bool = False,
    ) -> torch.Tensor:
        """The diffusion loss of latents (B, 4, h, w); random timesteps and noise unless given.

        Validation gives both (fixed per image, so every epoch's loss is measured on the same problems);
        then nothing random is added (no input perturbation); the loss type and weighting still apply.
        ``mask`` (B, 1, h, w) weights the latent cells (``data.alpha_mask``, see :meth:`loss_mask`).
        ``plain``: unweighted MSE whatever the loss options (``validation_loss='mse'``).
        """
        h = self.hparams
        drawn = timesteps is None and noise is None
        if noise is None:
            noise = make_noise(latents, h.noise_offset)
        if timesteps is None:
            timesteps = sample_training_timesteps(
                latents.shape[0],
                len(self.alphas_cumprod),
                sampling=h.timestep_sampling,
                t_min=h.timestep_min,
                t_max=h.timestep_max,
                shift=h.timestep_shift,
                logit_mean=h.logit_mean,
                logit_std=h.logit_std,
                device=latents.device,
            )
        # The perturbation is part of a training draw; given timesteps and noise are used as they are.
        noisy_input = perturb_noise(noise, h.ip_noise_gamma) if drawn else noise
        noisy = add_noise(latents, noisy_input, timesteps, self.alphas_cumprod)
        target = training_target(latents, noise, timesteps, self.alphas_cumprod, self.prediction_type)
        prediction = self.predict(noisy, timesteps, embeds)
        options = LossOptions() if plain else LossOptions.of(h)
        return options.loss(prediction, target, timesteps, self.alphas_cumprod, self.prediction_type, mask)

    def on_fit_start(self) -> None:
        # Validation latents first: build_caches may move the VAE off the accelerator afterwards.
        data = pixel_data(self.trainer)
        sets = data.validation_sets() if data is not None else []
        self.validation = ValidationCaches.build(self, sets) if sets else None
        self.latent_cache, self.text_cache = build_caches(self, data)
        offload_frozen(self)

    def batch_loss(self, batch: dict) -> torch.Tensor:
        """The diffusion loss of a data batch, from the caches where they are on."""
        index = batch["index"]
        latents = self.latent_cache[index] if self.latent_cache else self.encode_images(batch["pixels"])
        embeds = self.text_cache[index] if self.text_cache else self.encode_text(list(batch["caption"]))
        # A cache built from pairs with an alpha holds their masks; else the batch's alpha (or none) is used.
        if self.latent_cache:
            mask = self.latent_cache.mask(index)
        else:
            mask = self.loss_mask(batch.get("alpha"), latents.shape[-2:])
        return self.compute_loss(latents, embeds, mask=mask)

    def configure_callbacks(self) -> list[L.Callback]:
        # What every run of this module needs, also when a Trainer is built in Python without the CLI:
        # exact mid-epoch resume, and Ctrl-C / SIGTERM stopping with a checkpoint (written atomically).
        bar = epoch_progress_bar(self.trainer.progress_bar_callback)  # epochs counted from 1
        return [ExactResume(), SafeStop(), *([bar] if bar else [])]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        loss = self.batch_loss(batch)
        if not torch.isfinite(loss):
            where = f"at global step {self.global_step} (epoch {self.current_epoch + 1}, batch {batch_idx})"
            if self.skipped_batches >= self.hparams.skip_nonfinite_loss:
                raise FloatingPointError(
                    f"loss is {loss.item()} {where}; lower the learning rate or check the data"
                    + (f" ({self.skipped_batches} batches skipped before)" if self.skipped_batches else "")
                )
            self.skipped_batches += 1
            log.warning("loss is %s %s: batch skipped (%d so far)", loss.item(), where, self.skipped_batches)
            self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, batch_size=1)
            return None  # Lightning skips backward: the optimizer step finds no gradients, nothing changes
        size = len(batch["index"])
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        # TensorBoard's `epoch` counts from 1, as the LoRA files, samples and progress bar do (Lightning's
        # own would be 0-based); logged with the step's values and with the epoch's (on_train_epoch_end).
        self.log("epoch", float(self.current_epoch + 1), on_step=True, on_epoch=False, batch_size=size)
        self.epoch_loss.add(self.current_epoch, loss.detach(), size)
        return loss

    def on_train_epoch_end(self) -> None:
        # The epoch's mean loss from the module's own sums, which a checkpoint keeps: an epoch interrupted
        # and resumed mid-way gets the mean of all its batches, not of those after the resume.
        # Reduced across processes once per epoch, not at every step.
        total, count = self.epoch_loss.totals(self.current_epoch, self.device)
        total, count = self.trainer.strategy.reduce(torch.stack([total, count]), reduce_op="sum")
        if count > 0:
            self.log("train/loss_epoch", total / count, on_step=False, on_epoch=True)
        self.log("epoch", float(self.current_epoch + 1), on_step=False, on_epoch=True)

    def configure_optimizers(self):
        return lora_optimizer(self)

    # Schedule-free optimizers (training/schedule_free.py): the weights at the training point y from a
    # batch's start to its optimizer step, at the averaged point x for everything else that reads them.
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        to_training_point(self.optimizers(use_pl_optimizer=False))

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, not in on_train_batch_end: callbacks' hooks (checkpoints, LoRA files) run before the module's.
        to_averaged_point(self.optimizers(use_pl_optimizer=False))

    # ----------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = self.trained_state(checkpoint["state_dict"])
        checkpoint["skipped_batches"] = self.skipped_batches
        checkpoint["epoch_loss"] = self.epoch_loss.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_batches = checkpoint.get("skipped_batches", 0)
        # Under DDP each rank's sums are its own; rank zero's are the ones saved, so only it restores them.
        if "epoch_loss" in checkpoint and self.global_rank == 0:
            self.epoch_loss.load_state_dict(checkpoint["epoch_loss"])
