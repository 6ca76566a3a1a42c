"""The model options' ranges, checked in one place for every way the module is built (``fit``'s command
line, Python, ``from-kohya``): :func:`model_problems` runs in ``PixelLoRAModule.__init__`` and in ``fit``'s
preflight (which lists them with the other sections' problems before anything loads); what only the base's
schedule can tell is :func:`check_objective`'s, once the base is loaded.
"""

from __future__ import annotations

import logging

from bespoke_pl.data.options import bad_number
from bespoke_pl.errors import ConfigError

log = logging.getLogger(__name__)


def model_problems(model) -> list[str]:
    """Values of the ``model`` options (a namespace or the module's ``hparams``) that cannot work."""
    problems = []
    rate = model.text_encoder_lr
    if isinstance(rate, int | float) and (bad_number(rate) or rate <= 0):
        problems.append(f"model.text_encoder_lr must be a positive number, got {rate} (0 trains nothing)")
    for name in ("alpha", "conv_alpha"):
        value = getattr(model, name)
        if value is not None and (bad_number(value) or value == 0):
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
    if not 0 <= model.lora_dropout < 1 or bad_number(model.lora_dropout):
        problems.append(f"model.lora_dropout must be in [0, 1), got {model.lora_dropout}")
    if bad_number(model.noise_offset) or model.noise_offset < 0:
        problems.append(f"model.noise_offset must be >= 0, got {model.noise_offset}")
    if model.min_snr_gamma is not None and (bad_number(model.min_snr_gamma) or model.min_snr_gamma <= 0):
        problems.append(f"model.min_snr_gamma must be > 0 or null (off), got {model.min_snr_gamma}")
    problems += objective_problems(model)
    if model.lr_warmup_steps < 0:
        problems.append(f"model.lr_warmup_steps must be >= 0, got {model.lr_warmup_steps}")
    ratio = model.get("loraplus_lr_ratio")
    if ratio is not None and (bad_number(ratio) or ratio <= 0):
        problems.append(
            f"model.loraplus_lr_ratio must be > 0 or null (off; the paper suggests 16), got {ratio}"
        )
    if model.validation_timesteps < 1:
        problems.append(f"model.validation_timesteps must be >= 1, got {model.validation_timesteps}")
    return problems


def check_model_options(model) -> None:
    """Raise one :class:`ConfigError` listing every model value that cannot work."""
    problems = model_problems(model)
    if problems:
        raise ConfigError("; ".join(problems))


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
        if bad_number(value) or value <= 0:
            problems.append(f"model.{name} must be > 0, got {value}")
    if bad_number(model.logit_mean):
        problems.append(f"model.logit_mean must be a finite number, got {model.logit_mean}")
    if bad_number(model.ip_noise_gamma) or model.ip_noise_gamma < 0:
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
