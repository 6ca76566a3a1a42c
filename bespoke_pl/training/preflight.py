"""Checks of a ``fit`` configuration that run before anything heavy: one clear line per mistake.

What is refused, and why:
- options that do nothing in the combination given (``text_encoder_lr`` with frozen text encoders,
  ``keep_tokens`` without ``shuffle_captions``, ``conv_alpha`` without ``conv_rank``, ``lokr_factor``
  without LoKr, ``use_dora`` / ``lora_dropout`` with LoHa or LoKr, a Huber setting without a Huber loss,
  ``logit_mean`` / ``logit_std`` without ``logit_normal``) or that contradict each other
  (``sample.every_n_epochs`` beyond ``trainer.max_epochs``: no sample would ever be made);
- a ``pixel_scale`` whose image side ``resolution * pixel_scale`` is not a multiple of the VAE's factor
  (8 for SD 1.5 and SDXL): the encoder would drop the last pixels and sampling at that size fails. The
  UNet's own downsampling is not a constraint: diffusers passes explicit upsample sizes, so odd latents
  (3x3 at k=1, 9x9 at k=3) train and sample; with 24x24 art every k is valid (24 = 3 x 8);
- values outside their range: the model's and the data's ranges are checked by
  :mod:`bespoke_pl.training.options` and :mod:`bespoke_pl.data.options` (which the module and the data
  module run too, so Python and ``from-kohya`` get the same messages); here they are listed with the
  trainer's and the optimizer's in one line, before anything loads;
- a new run in a folder that already holds another run's LoRA files or checkpoints.
"""

from __future__ import annotations

import json
import logging
from math import gcd
from pathlib import Path

from bespoke_pl.data.options import bad_number, data_problems
from bespoke_pl.diffusion.base import check_family, detect_family, resolve_spec
from bespoke_pl.errors import ConfigError
from bespoke_pl.training.optimizer_choices import optimizer_problems
from bespoke_pl.training.options import model_problems

log = logging.getLogger(__name__)

DEFAULT_VAE_FACTOR = 8  # SD 1.5 and SDXL


def vae_scale_factor(base_model: str) -> int:
    """The VAE's downsampling factor, from a local diffusers folder's ``vae/config.json`` (else 8)."""
    if base_model.startswith("tiny:"):
        return DEFAULT_VAE_FACTOR  # the tiny models keep the real factor; no need to build one to check
    config = Path(resolve_spec(base_model)).expanduser() / "vae" / "config.json"
    if config.is_file():
        return 2 ** (len(json.loads(config.read_text())["block_out_channels"]) - 1)
    return DEFAULT_VAE_FACTOR


def schedule_length(base_model: str) -> int | None:
    """The base's ``num_train_timesteps`` where it is on disk as a diffusers folder (tiny bases: SD's 1000);
    None where only loading it would tell (a hub id, a single file)."""
    if base_model.startswith("tiny:"):
        return 1000
    config = Path(resolve_spec(base_model)).expanduser() / "scheduler" / "scheduler_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("num_train_timesteps", 1000))
    return None


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


def value_problems(config) -> list[str]:
    """Values that cannot work or would train nothing, one message each (a parsed ``fit`` namespace).

    Checked here, before any weight loads, so a typo costs no model load and leaves no run folder; deep in
    Lightning the same values end in an ``OverflowError`` (``max_epochs -1``) or train nothing silently.
    """
    model, data, trainer = config.model, config.data, config.trainer
    problems = []
    if trainer.max_epochs is not None and trainer.max_epochs < 1:
        problems.append(
            f"trainer.max_epochs must be >= 1, got {trainer.max_epochs} (a run is a fixed number of epochs: "
            "one LoRA file each; -1, Lightning's 'no limit', would never finish)"
        )
    if trainer.max_steps == 0:
        problems.append("trainer.max_steps 0 trains nothing (-1: no step limit)")
    optimizer = getattr(model, "optimizer", None)
    lr = getattr(getattr(optimizer, "init_args", None), "lr", None)
    if isinstance(lr, int | float) and (bad_number(lr) or lr <= 0):
        problems.append(f"model.optimizer.lr must be a positive number, got {lr} (0 trains nothing)")
    problems += model_problems(model)  # the same checks as PixelLoRAModule.__init__'s, listed with the rest
    problems += optimizer_problems(model, trainer)  # Prodigy, schedule-free and 8-bit optimizers' needs
    problems += data_problems(data)
    return problems


def check_options(config) -> None:
    """Refuse values that cannot work and option combinations that do nothing or contradict each other
    (a parsed ``fit`` namespace)."""
    model, data, trainer = config.model, config.data, config.trainer
    problems = value_problems(config)
    if model.text_encoder_lr is not None and not model.train_text_encoder:
        problems.append("model.text_encoder_lr is set but model.train_text_encoder is false")
    if data.keep_tokens and not data.shuffle_captions:
        problems.append("data.keep_tokens only applies with data.shuffle_captions: true")
    if model.lokr_factor != -1 and model.network != "lokr":
        problems.append("model.lokr_factor is set but model.network is not lokr")
    if model.network != "lora":  # peft's LoHa/LoKr have neither (only rank and module dropout)
        for name, value in (("use_dora", model.use_dora), ("lora_dropout", model.lora_dropout)):
            if value:
                problems.append(f"model.{name} applies to model.network lora only, not {model.network}")
    if model.conv_alpha is not None and model.conv_rank is None:
        problems.append("model.conv_alpha is set but model.conv_rank is not (no convolution LoRA)")
    if model.loss_type not in ("huber", "smooth_l1") and (
        model.huber_c != 0.1 or model.huber_schedule != "snr"
    ):
        problems.append(
            f"model.huber_c / huber_schedule only apply with model.loss_type huber or smooth_l1, not {model.loss_type}"
        )
    if model.timestep_sampling != "logit_normal" and (model.logit_mean != 0.0 or model.logit_std != 1.0):
        problems.append("model.logit_mean / logit_std only apply with model.timestep_sampling: logit_normal")
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
    steps = schedule_length(model.base_model) if model.timestep_max else None
    if steps is not None and model.timestep_max > steps:
        problems.append(
            f"model.timestep_max {model.timestep_max} is beyond the base's {steps} training timesteps"
        )
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
