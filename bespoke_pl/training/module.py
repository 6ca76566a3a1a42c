"""The LightningModule: wires base model, LoRA, text conditioning and the diffusion loss; logs the loss."""

from __future__ import annotations

import logging
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from bespoke_pl.callbacks.progress import epoch_progress_bar
from bespoke_pl.callbacks.resume import ExactResume
from bespoke_pl.callbacks.safe_stop import SafeStop
from bespoke_pl.diffusion.base import BaseModel, load_base
from bespoke_pl.diffusion.conditioning import PromptEmbeds, encode_prompts, predict_noise
from bespoke_pl.diffusion.devices import weight_dtype_for
from bespoke_pl.diffusion.losses import (
    HuberSchedule,
    LossType,
    debiased_weights,
    huber_threshold,
    latent_mask,
)
from bespoke_pl.diffusion.objective import (
    add_noise,
    alphas_cumprod_from_config,
    diffusion_loss,
    make_noise,
    min_snr_weights,
    perturb_noise,
    training_target,
    zero_terminal_snr_config,
)
from bespoke_pl.diffusion.sampling import build_pipeline, generate
from bespoke_pl.diffusion.timesteps import TimestepSampling, sample_training_timesteps
from bespoke_pl.lora.inject import (
    add_lora,
    add_text_encoder_lora,
    lora_parameters,
    lora_state_dict,
    unet_targets,
)
from bespoke_pl.pixelart.grid import to_model_range, upscale_nearest
from bespoke_pl.pixelart.roundtrip import images_per_vae_call
from bespoke_pl.training.cache import LatentCache, TextCache
from bespoke_pl.training.epoch_loss import EpochLoss
from bespoke_pl.training.optim import lora_optimizer
from bespoke_pl.training.preflight import check_objective
from bespoke_pl.training.schedule_free import to_averaged_point, to_training_point
from bespoke_pl.training.speed import bring_frozen_back, build_caches, set_attention
from bespoke_pl.training.validation import (
    SPLITS,
    LossSums,
    ValidationCaches,
    batch_loss_sum,
    fixed_timesteps,
)

log = logging.getLogger(__name__)


class PixelLoRAModule(L.LightningModule):
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
        if pixel_scale < 1 or clip_skip < 1 or rank < 1:
            raise ValueError("pixel_scale, clip_skip and rank must all be >= 1")
        self.save_hyperparameters(ignore=["optimizer"])
        self.optimizer_factory = optimizer
        # Frozen base weights are not part of a checkpoint (see on_save_checkpoint), so loading is lenient.
        self.strict_loading = False
        self.family: str | None = None
        self.tokenizers: list = []
        self.latent_cache: LatentCache | None = None
        self.text_cache: TextCache | None = None
        self.skipped_batches = 0
        self.epoch_loss = EpochLoss()
        self.validation: ValidationCaches | None = None
        self.val_sums = LossSums.empty()

    # ----------------------------------------------------------------------------------------- setup
    def configure_model(self) -> None:
        if self.family is not None:
            return  # already built (configure_model runs once per fit/validate call)
        h = self.hparams
        self.attach_base(load_base(h.base_model, h.family, h.base_config))

    def attach_base(self, base: BaseModel) -> None:
        """Take a loaded base model, add LoRA and place the frozen parts in their dtypes."""
        h = self.hparams
        self.family, self.tokenizers = base.family, base.tokenizers
        # One schedule for training and sampling: with zero_terminal_snr both use the rescaled betas.
        config = base.scheduler_config
        self.scheduler_config = zero_terminal_snr_config(config) if h.zero_terminal_snr else config
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.register_buffer("alphas_cumprod", alphas_cumprod_from_config(self.scheduler_config), False)
        check_objective(h, self.prediction_type, len(self.alphas_cumprod))
        self.vae = base.vae.float()
        # configure_model runs before the strategy moves the module, so ask the strategy for the device.
        device = self._trainer.strategy.root_device if self._trainer is not None else self.device
        dtype = weight_dtype_for(device, h.weight_dtype)
        self.unet = base.unet if base.unet.dtype == dtype else base.unet.to(dtype)
        self.text_encoders = nn.ModuleList(
            [e if e.dtype == dtype else e.to(dtype) for e in base.text_encoders]
        )
        linear, conv = unet_targets(self.unet, include_conv=h.conv_rank is not None)
        network = {"network": h.network, "lokr_factor": h.lokr_factor}
        add_lora(
            self.unet, linear, h.rank, h.alpha, h.lora_dropout, h.use_dora, conv, h.conv_rank, h.conv_alpha,
            **network,
        )  # fmt: skip
        if h.train_text_encoder:
            add_text_encoder_lora(
                list(self.text_encoders),
                self.family,
                h.clip_skip,
                h.rank,
                h.alpha,
                h.lora_dropout,
                h.use_dora,
                **network,
            )
        # LoRA weights train in float32 even when the frozen weights they sit on are half precision.
        for parameter in self.trainable_parameters():
            parameter.data = parameter.data.float()
        if h.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        set_attention(self.unet, h.attention)
        if h.compile_unet:
            self.unet.compile()  # in place: parameter names (and so checkpoints and LoRA files) stay the same
        self.train(self.training)
        trainable = sum(p.numel() for p in self.trainable_parameters())
        modules = len(linear) + len(conv)
        log.info(
            "%s base %s: %d trainable LoRA parameters (%d modules)",
            self.family,
            h.base_model,
            trainable,
            modules,
        )

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode; only LoRA dropout follows the training mode."""
        super().train(mode)
        if self.family is None:
            return self
        for part in (self.vae, self.unet, self.text_encoders):
            part.eval()
            for name, module in part.named_modules():
                if "lora_dropout" in name:
                    module.train(mode)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = lora_parameters(self.unet)
        if self.hparams.train_text_encoder:
            params += [p for e in self.text_encoders for p in lora_parameters(e)]
        return params

    # ------------------------------------------------------------------------------------- encoding
    @property
    def image_size(self) -> int:
        return self.hparams.resolution * self.hparams.pixel_scale

    @property
    def conditioning_size(self) -> int:
        """The image size SDXL is told (original and target size time ids): ``sdxl_size`` or the real one."""
        return self.hparams.sdxl_size or self.image_size

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor, mean: bool = False) -> torch.Tensor:
        """uint8 art (B, 3, 24, 24) -> scaled latents (B, 4, 3k, 3k) through the fp32 VAE.

        The posterior mean, not a sample: the art is exact, and a deterministic latent is what a cache
        stores; the SD VAE's posterior variance is tiny anyway. ``latent_sampling='sample'`` draws instead,
        unless ``mean`` (validation, which must measure the same latent every time).
        """
        vae_device = next(self.vae.parameters()).device
        k = self.hparams.pixel_scale
        draw = self.hparams.latent_sampling == "sample" and not mean
        parts = []
        # The caches, validation and uncached steps all encode here, so here the pixel budget applies.
        for chunk in pixels.split(images_per_vae_call(pixels.shape[-1] * k, len(pixels))):
            images = to_model_range(upscale_nearest(chunk, k)).to(vae_device)
            with torch.autocast(vae_device.type, enabled=False):
                posterior = self.vae.encode(images.float()).latent_dist
                parts.append(posterior.sample() if draw else posterior.mean)
        return torch.cat(parts).to(self.device) * self.vae.config.scaling_factor

    def encode_text(self, captions: list[str]) -> PromptEmbeds:
        """Captions -> UNet conditioning, with the training clip skip (used for sampling too)."""
        encoders = list(self.text_encoders)
        with torch.set_grad_enabled(self.hparams.train_text_encoder and torch.is_grad_enabled()):
            return encode_prompts(captions, self.tokenizers, encoders, self.hparams.clip_skip).to(self.device)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds) -> torch.Tensor:
        return predict_noise(self.unet, noisy, timesteps, embeds, self.conditioning_size)

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
                latents.shape[0], len(self.alphas_cumprod), h.timestep_sampling, h.timestep_min,
                h.timestep_max, h.timestep_shift, h.logit_mean, h.logit_std, device=latents.device,
            )  # fmt: skip
        # The perturbation is part of a training draw; given timesteps and noise are used as they are.
        noisy_input = perturb_noise(noise, h.ip_noise_gamma) if drawn else noise
        noisy = add_noise(latents, noisy_input, timesteps, self.alphas_cumprod)
        target = training_target(latents, noise, timesteps, self.alphas_cumprod, self.prediction_type)
        prediction = self.predict(noisy, timesteps, embeds)
        if plain:
            return diffusion_loss(prediction, target, None, "l2", None, mask)
        a, kind = self.alphas_cumprod, self.prediction_type
        weights = min_snr_weights(timesteps, a, h.min_snr_gamma, kind) if h.min_snr_gamma else None
        if h.debiased_estimation:
            debiased = debiased_weights(timesteps, a, kind)
            weights = debiased if weights is None else weights * debiased
        huber_c = None
        if h.loss_type in ("huber", "smooth_l1"):
            huber_c = huber_threshold(timesteps, a, h.huber_c, h.huber_schedule)
        return diffusion_loss(prediction, target, weights, h.loss_type, huber_c, mask)

    def loss_mask(self, alpha: torch.Tensor | None, latent_size: tuple[int, int]) -> torch.Tensor | None:
        """Per-latent-cell loss weights (B, 1, h, w) from the art's alpha uint8 (B, 1, H, W); None: unmasked."""
        if alpha is None:
            return None
        return latent_mask(alpha.to(self.device), self.hparams.pixel_scale, latent_size)

    def on_fit_start(self) -> None:
        # Validation latents first: build_caches may move the VAE off the accelerator afterwards.
        sets = getattr(self.trainer.datamodule, "validation_sets", list)()
        self.validation = ValidationCaches.build(self, sets) if sets else None
        build_caches(self, self.trainer.datamodule)

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

    # ----------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self.val_sums = LossSums.empty()

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        """The deterministic loss (see :mod:`~bespoke_pl.training.validation`) of held-out images
        (``dataloader_idx`` 0) or of the training subset (1)."""
        index = batch["index"]
        if self.validation is not None:
            latents, embeds, mask = self.validation.lookup(
                self, dataloader_idx, index, list(batch["caption"])
            )
        else:  # validation outside fit (no caches built)
            latents = self.encode_images(batch["pixels"], mean=True)
            embeds = self.encode_text(list(batch["caption"]))
            mask = self.loss_mask(batch.get("alpha"), latents.shape[-2:])
        timesteps = fixed_timesteps(self.hparams.validation_timesteps, len(self.alphas_cumprod))
        seed = self.hparams.validation_seed + dataloader_idx  # the subset's noise is not the held-out's

        def loss(latents, embeds, timesteps, noise):
            plain = self.hparams.validation_loss == "mse"
            return self.compute_loss(latents, embeds, timesteps, noise, mask=mask, plain=plain)

        total = batch_loss_sum(loss, latents, embeds, index, timesteps, seed)
        self.val_sums.add(SPLITS[dataloader_idx], total, len(index))

    def on_validation_epoch_end(self) -> None:
        sums = self.val_sums
        if self.trainer.world_size > 1:  # each process measured its share of the images
            sums = sums.reduced(self.trainer.strategy, self.device)
        for name, value in sums.means().items():
            self.log(name, value, on_epoch=True, add_dataloader_idx=False, batch_size=1)

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
        # Only what is trained: a few MB of LoRA, not gigabytes of frozen base weights.
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in names}
        bad = [k for k, v in checkpoint["state_dict"].items() if not torch.isfinite(v).all()]
        if bad:  # a resumable state must never be replaced by diverged weights
            raise FloatingPointError(
                f"refusing to write a checkpoint at global step {self.global_step}: non-finite LoRA weights "
                f"in {len(bad)} tensors, e.g. {bad[0]}"
            )
        checkpoint["skipped_batches"] = self.skipped_batches
        checkpoint["epoch_loss"] = self.epoch_loss.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_batches = checkpoint.get("skipped_batches", 0)
        # Under DDP each rank's sums are its own; rank zero's are the ones saved, so only it restores them.
        if "epoch_loss" in checkpoint and self.global_rank == 0:
            self.epoch_loss.load_state_dict(checkpoint["epoch_loss"])

    def lora_components(self) -> dict[str, nn.Module]:
        """The modules carrying LoRA, by diffusers component name (``unet``, ``text_encoder``, ...)."""
        parts: dict[str, nn.Module] = {"unet": self.unet}
        if self.hparams.train_text_encoder:
            for i, encoder in enumerate(self.text_encoders):
                parts["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = encoder
        return parts

    def lora_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """LoRA weights per component in peft naming (``<module>.lora_A.weight`` ...)."""
        return {name: lora_state_dict(model) for name, model in self.lora_components().items()}

    # -------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        seeds: list[int],
        negative_prompt: str = "",
        steps: int = 20,
        guidance_scale: float = 5.0,
        sampler: str = "euler",
    ) -> torch.Tensor:
        """Generate at 24k px: the decoded images, uint8 (N, 3, 24k, 24k); :func:`~bespoke_pl.pixelart.snap.to_art`
        turns them into the art."""
        was_training = self.training
        self.eval()
        restore = bring_frozen_back(self)
        try:
            parts = (self.family, self.unet, self.vae, self.tokenizers, list(self.text_encoders))
            pipe = build_pipeline(*parts, self.scheduler_config, sampler)
            size, told = self.image_size, self.conditioning_size
            return generate(
                pipe, self.encode_text, prompts, seeds, size, negative_prompt, steps, guidance_scale,
                conditioning_size=told,
            )  # fmt: skip
        finally:
            restore()
            self.train(was_training)
