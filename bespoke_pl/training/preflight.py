"""Checks of a ``fit`` configuration that run before anything heavy: one clear line per mistake.

What is refused, and why:
- options that do nothing in the combination given (``text_encoder_lr`` with frozen text encoders,
  ``keep_tokens`` without ``shuffle_captions``, ``conv_alpha`` without ``conv_rank``) or that contradict
  each other (``sample.every_n_epochs`` beyond ``trainer.max_epochs``: no sample would ever be made);
- a ``pixel_scale`` whose image side ``resolution * pixel_scale`` is not a multiple of the VAE's factor
  (8 for SD 1.5 and SDXL): the encoder would drop the last pixels and sampling at that size fails. The
  UNet's own downsampling is not a constraint: diffusers passes explicit upsample sizes, so odd latents
  (3x3 at k=1, 9x9 at k=3) train and sample; with 24x24 art every k is valid (24 = 3 x 8);
- a new run in a folder that already holds another run's LoRA files or checkpoints.
"""

from __future__ import annotations

import json
from math import gcd
from pathlib import Path

from bespoke_pl.diffusion.base import check_family, detect_family, resolve_spec
from bespoke_pl.errors import ConfigError

DEFAULT_VAE_FACTOR = 8  # SD 1.5 and SDXL


def vae_scale_factor(base_model: str) -> int:
    """The VAE's downsampling factor, from a local diffusers folder's ``vae/config.json`` (else 8)."""
    if base_model.startswith("tiny:"):
        return DEFAULT_VAE_FACTOR  # the tiny models keep the real factor; no need to build one to check
    config = Path(resolve_spec(base_model)).expanduser() / "vae" / "config.json"
    if config.is_file():
        return 2 ** (len(json.loads(config.read_text())["block_out_channels"]) - 1)
    return DEFAULT_VAE_FACTOR


def check_pixel_grid(resolution: int, pixel_scale: int, factor: int = DEFAULT_VAE_FACTOR) -> None:
    """Refuse an upscaled side that the VAE cannot encode whole."""
    side = resolution * pixel_scale
    if side % factor:
        step = factor // gcd(resolution, factor)
        valid = ", ".join(str(step * i) for i in range(1, 5))
        raise ConfigError(
            f"model.pixel_scale {pixel_scale} makes {resolution}x{resolution} art {side} px, not a multiple of "
            f"the VAE's {factor}; use pixel_scale {valid}, ..."
        )


def check_options(config) -> None:
    """Refuse option combinations that do nothing or contradict each other (a parsed ``fit`` namespace)."""
    model, data, trainer = config.model, config.data, config.trainer
    problems = []
    if model.text_encoder_lr is not None and not model.train_text_encoder:
        problems.append("model.text_encoder_lr is set but model.train_text_encoder is false")
    if data.keep_tokens and not data.shuffle_captions:
        problems.append("data.keep_tokens only applies with data.shuffle_captions: true")
    if model.conv_alpha is not None and model.conv_rank is None:
        problems.append("model.conv_alpha is set but model.conv_rank is not (no convolution LoRA)")
    sample = config.get("sample")
    if sample is not None:
        max_epochs = trainer.max_epochs
        if sample.every_n_epochs and max_epochs and max_epochs > 0 and sample.every_n_epochs > max_epochs:
            problems.append(
                f"sample.every_n_epochs {sample.every_n_epochs} > trainer.max_epochs {max_epochs}: "
                "no samples would be made (0 turns sampling off)"
            )
        if sample.sample_at_start and not sample.every_n_epochs:
            problems.append("sample.sample_at_start is set but sample.every_n_epochs 0 turns sampling off")
    save_lora = config.get("save_lora")
    if save_lora is not None and save_lora.every_n_epochs < 1:
        problems.append("save_lora.every_n_epochs must be >= 1 (the last epoch is always saved)")
    if problems:
        raise ConfigError("; ".join(problems))
    check_pixel_grid(data.resolution, model.pixel_scale, vae_scale_factor(model.base_model))


def check_base(base_model: str, family: str = "auto") -> str:
    """The base model's family, read from its config or key names without loading weights.

    Raises:
        BaseModelError: missing, unreadable, or not the family the config insists on.
    """
    return check_family(base_model, detect_family(resolve_spec(base_model)), family)
