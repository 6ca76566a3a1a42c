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
- objective values outside their domain: an empty timestep range, a Huber threshold, shift or logit
  std <= 0, a negative input perturbation; a range beyond the base's own schedule once it is known;
- a new run in a folder that already holds another run's LoRA files or checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
from math import gcd
from pathlib import Path

from bespoke_pl.diffusion.base import check_family, detect_family, resolve_spec
from bespoke_pl.errors import ConfigError
from bespoke_pl.training.optimizer_choices import optimizer_problems

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


def _bad_number(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


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
    for name, value in (("model.optimizer.lr", lr), ("model.text_encoder_lr", model.text_encoder_lr)):
        if isinstance(value, int | float) and (_bad_number(value) or value <= 0):
            problems.append(f"{name} must be a positive number, got {value} (0 trains nothing)")
    for name in ("alpha", "conv_alpha"):
        value = getattr(model, name)
        if value is not None and (_bad_number(value) or value == 0):
            problems.append(
                f"model.{name} {value} makes the LoRA's scale alpha / rank {value}: it trains nothing"
            )
    for name in ("rank", "pixel_scale", "clip_skip"):
        if getattr(model, name) < 1:
            problems.append(f"model.{name} must be >= 1, got {getattr(model, name)}")
    if model.lokr_factor != -1 and model.lokr_factor < 1:
        problems.append(
            f"model.lokr_factor must be >= 1 or -1 (near the square root), got {model.lokr_factor}"
        )
    if model.conv_rank is not None and model.conv_rank < 1:
        problems.append(f"model.conv_rank must be >= 1 or null (no convolution LoRA), got {model.conv_rank}")
    if not 0 <= model.lora_dropout < 1 or _bad_number(model.lora_dropout):
        problems.append(f"model.lora_dropout must be in [0, 1), got {model.lora_dropout}")
    if _bad_number(model.noise_offset) or model.noise_offset < 0:
        problems.append(f"model.noise_offset must be >= 0, got {model.noise_offset}")
    if model.min_snr_gamma is not None and (_bad_number(model.min_snr_gamma) or model.min_snr_gamma <= 0):
        problems.append(f"model.min_snr_gamma must be > 0 or null (off), got {model.min_snr_gamma}")
    problems += objective_problems(model)
    if model.lr_warmup_steps < 0:
        problems.append(f"model.lr_warmup_steps must be >= 0, got {model.lr_warmup_steps}")
    ratio = model.get("loraplus_lr_ratio")
    if ratio is not None and (_bad_number(ratio) or ratio <= 0):
        problems.append(
            f"model.loraplus_lr_ratio must be > 0 or null (off; the paper suggests 16), got {ratio}"
        )
    problems += optimizer_problems(model, trainer)  # Prodigy, schedule-free and 8-bit optimizers' needs
    for name in ("batch_size", "num_repeats"):
        if getattr(data, name) < 1:
            problems.append(f"data.{name} must be >= 1, got {getattr(data, name)}")
    if data.num_workers < 0:
        problems.append(
            f"data.num_workers must be >= 0 (0: load in the main process), got {data.num_workers}"
        )
    if not 0 <= data.caption_dropout <= 1 or _bad_number(data.caption_dropout):
        problems.append(f"data.caption_dropout must be in [0, 1], got {data.caption_dropout}")
    problems += _validation_problems(model, data)
    return problems


def _validation_problems(model, data) -> list[str]:
    split = data.val_split
    problems = []
    if _bad_number(split) or split < 0 or (split >= 1 and split != int(split)):
        problems.append(
            f"data.val_split must be a fraction in [0, 1) or a whole count of images, got {split}"
        )
    if split and data.val_root:
        problems.append(
            "data.val_split and data.val_root both set: hold out images or give a folder, not both"
        )
    if model.validation_timesteps < 1:
        problems.append(f"model.validation_timesteps must be >= 1, got {model.validation_timesteps}")
    return problems


def objective_problems(model) -> list[str]:
    """The objective options' values that cannot work (timestep range, Huber threshold, perturbation)."""
    problems = []
    low, high = model.timestep_min, model.timestep_max
    if low < 0:
        problems.append(f"model.timestep_min must be >= 0, got {low}")
    if high is not None and high <= max(low, 0):
        problems.append(
            f"model.timestep_max {high} must be > model.timestep_min {max(low, 0)} "
            "(timesteps are drawn from [min, max))"
        )
    for name in ("huber_c", "timestep_shift", "logit_std"):
        value = getattr(model, name)
        if _bad_number(value) or value <= 0:
            problems.append(f"model.{name} must be > 0, got {value}")
    if _bad_number(model.logit_mean):
        problems.append(f"model.logit_mean must be a finite number, got {model.logit_mean}")
    if _bad_number(model.ip_noise_gamma) or model.ip_noise_gamma < 0:
        problems.append(f"model.ip_noise_gamma must be >= 0 (0: off), got {model.ip_noise_gamma}")
    return problems


def check_objective(hparams, prediction_type: str, num_timesteps: int) -> None:
    """What only the base's schedule can tell: a timestep range beyond it, zero terminal SNR on an
    epsilon base (allowed, as kohya allows it, with a warning)."""
    if hparams.timestep_max is not None and hparams.timestep_max > num_timesteps:
        raise ConfigError(
            f"model.timestep_max {hparams.timestep_max} is beyond the base's {num_timesteps} training timesteps "
            f"(the range is [timestep_min, timestep_max), at most {num_timesteps})"
        )
    if hparams.timestep_min >= num_timesteps:
        raise ConfigError(
            f"model.timestep_min {hparams.timestep_min} is beyond the base's {num_timesteps} training timesteps"
        )
    if hparams.zero_terminal_snr and prediction_type == "epsilon":
        log.warning(
            "model.zero_terminal_snr on an epsilon-prediction base: at the last timestep the input is pure "
            "noise and predicting that noise says nothing about the image; Lin et al. pair the rescaled "
            "schedule with v prediction. Training goes on (min-SNR and debiased weights stay finite)"
        )


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
