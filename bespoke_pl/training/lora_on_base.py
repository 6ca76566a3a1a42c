"""The frozen base model with LoRA on it: building, encoding art and captions, predicting, sampling.

:class:`LoRAOnBase` is the part of :class:`~bespoke_pl.training.module.PixelLoRAModule` that does not depend
on the training loop: what the model is and how it turns art and captions into the UNet's inputs. The
LightningModule adds the options, the training step, validation and checkpoints.
"""

from __future__ import annotations

import functools
import logging

import lightning as L
import torch
from torch import nn

from bespoke_pl.diffusion.base import BaseModel
from bespoke_pl.diffusion.conditioning import PromptEmbeds, encode_prompts, predict_noise
from bespoke_pl.diffusion.devices import weight_dtype_for
from bespoke_pl.diffusion.losses import latent_mask
from bespoke_pl.diffusion.objective import alphas_cumprod_from_config, zero_terminal_snr_config
from bespoke_pl.diffusion.sampling import build_pipeline, generate
from bespoke_pl.lora.inject import (
    add_lora,
    add_text_encoder_lora,
    lora_parameters,
    lora_state_dict,
    unet_targets,
)
from bespoke_pl.pixelart.grid import to_model_range, upscale_nearest
from bespoke_pl.pixelart.roundtrip import images_per_vae_call
from bespoke_pl.training.cache import LatentCache, TextCache, module_fingerprint
from bespoke_pl.training.options import check_objective
from bespoke_pl.training.speed import bring_frozen_back, set_attention

log = logging.getLogger(__name__)


class LoRAOnBase(L.LightningModule):
    """A base model (VAE, UNet, text encoders) with LoRA layers; its options are the subclass's ``hparams``."""

    family: str | None = None
    tokenizers: list
    # Filled once per fit (see speed.build_caches) and read by the step; None: encode every batch.
    latent_cache: LatentCache | None = None
    text_cache: TextCache | None = None

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
        adapter = {"rank": h.rank, "alpha": h.alpha, "network": h.network, "lokr_factor": h.lokr_factor}
        add_lora(
            self.unet,
            linear,
            dropout=h.lora_dropout,
            use_dora=h.use_dora,
            conv_targets=conv,
            conv_rank=h.conv_rank,
            conv_alpha=h.conv_alpha,
            **adapter,
        )
        if h.train_text_encoder:
            encoders = list(self.text_encoders)
            add_text_encoder_lora(
                encoders, self.family, h.clip_skip, dropout=h.lora_dropout, dora=h.use_dora, **adapter
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

    def trained_state(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of ``state_dict``: the trained LoRA weights (a few MB), not gigabytes of
        frozen base weights; refused when any is not finite, so a resumable state is never replaced by
        diverged weights."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        kept = {k: v for k, v in state_dict.items() if k in names}
        bad = [k for k, v in kept.items() if not torch.isfinite(v).all()]
        if bad:
            raise FloatingPointError(
                f"refusing to write a checkpoint at global step {self.global_step}: non-finite LoRA weights "
                f"in {len(bad)} tensors, e.g. {bad[0]}"
            )
        return kept

    @functools.cached_property
    def latent_key(self) -> str:
        """What a cached latent depends on besides its pixels: the VAE's weights and ``pixel_scale``.

        Hashing the VAE reads all its weights, so it is done once per module (the VAE is frozen).
        """
        return f"{module_fingerprint(self.vae)}|k={self.hparams.pixel_scale}"

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

    def loss_mask(self, alpha: torch.Tensor | None, latent_size: tuple[int, int]) -> torch.Tensor | None:
        """Per-latent-cell loss weights (B, 1, h, w) from the art's alpha uint8 (B, 1, H, W); None: unmasked."""
        if alpha is None:
            return None
        return latent_mask(alpha.to(self.device), self.hparams.pixel_scale, latent_size)

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
            pipe = build_pipeline(
                self.family,
                self.unet,
                self.vae,
                self.tokenizers,
                list(self.text_encoders),
                self.scheduler_config,
                sampler,
            )
            return generate(
                pipe,
                self.encode_text,
                prompts,
                seeds,
                size=self.image_size,
                negative_prompt=negative_prompt,
                steps=steps,
                guidance_scale=guidance_scale,
                conditioning_size=self.conditioning_size,
            )
        finally:
            restore()
            self.train(was_training)
