"""Loss functions of the diffusion objective beside plain MSE, their per-timestep weights, and loss masks.

- ``huber`` / ``smooth_l1`` (Khrapov et al. 2024, "Improving Diffusion Models's Data-Corruption Resistance
  using Scheduled Pseudo-Huber Loss"; kohya's ``loss_type``): the pseudo-Huber ``2c (sqrt(d^2 + c^2) - c)``
  is quadratic for small errors and linear for large ones, so a few outlier pixels do not dominate; its
  ``c`` follows a schedule over the timesteps (kohya's ``huber_schedule``): ``constant``, ``exponential``
  (``c^(t / T)``: 1 at t = 0 down to ``c`` at T) or ``snr`` (``(1 - c) / (1 + sigma_t)^2 + c``, sigma_t the
  noise-to-signal ratio: near 1, i.e. almost MSE, where the image is clear, ``c`` where it is all noise).
- Debiased estimation (Yu et al. 2023, "Debias the Training of Diffusion Models"; kohya's
  ``debiased_estimation_loss``): weight ``1 / sqrt(SNR_t)`` of the epsilon loss; for v prediction kohya
  uses ``1 / (SNR_t + 1)``, as it does here.
- The alpha mask: each latent cell's loss weighted by how opaque the art pixels under it are.

- Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy").

Every weight is a function of the schedule's SNR, computed by :func:`snr` alone. Zero terminal SNR makes
SNR 0 at the last timestep; every weight here stays finite there. How they combine into one loss is
:func:`bespoke_pl.diffusion.objective.LossOptions.loss`'s.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F

LossType = Literal["l2", "l1", "huber", "smooth_l1"]
LOSS_TYPES: tuple[str, ...] = get_args(LossType)
HuberSchedule = Literal["constant", "exponential", "snr"]
HUBER_SCHEDULES: tuple[str, ...] = get_args(HuberSchedule)
# kohya caps the SNR at 1000 (t = 0 is almost noise-free); the floor keeps 1 / sqrt(SNR) finite at
# zero terminal SNR, where the epsilon loss has nothing to say (the input is pure noise).
SNR_CAP, SNR_FLOOR = 1000.0, 1e-3


def snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio a_t / (1 - a_t) per sample (B,): 0 at a zero-terminal-SNR schedule's end."""
    a = alphas_cumprod.to(timesteps.device)[timesteps]
    return a / (1 - a)


def min_snr_weights(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """Min-SNR-gamma loss weights per sample (B,).

    For epsilon prediction the weight is min(SNR, gamma) / SNR, written min(1, gamma / SNR) so that it is 1,
    its limit, at SNR 0 (zero terminal SNR) instead of 0 / 0; for v prediction the v loss already carries
    a factor SNR + 1, so it is min(SNR, gamma) / (SNR + 1).
    """
    ratio = snr(timesteps, alphas_cumprod)
    if prediction_type == "v_prediction":
        return ratio.clamp(max=gamma) / (ratio + 1)
    return (gamma / ratio).clamp(max=1.0)


def huber_threshold(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, huber_c: float, schedule: str
) -> torch.Tensor:
    """The pseudo-Huber ``c`` per sample (B,), float32, following kohya's schedules."""
    if schedule == "constant":
        return torch.full(timesteps.shape, huber_c, dtype=torch.float32, device=timesteps.device)
    if schedule == "exponential":
        rate = -math.log(huber_c) / len(alphas_cumprod)
        return torch.exp(-rate * timesteps.float())
    if schedule == "snr":
        sigmas = snr(timesteps, alphas_cumprod).float().rsqrt()  # inf at zero terminal SNR: c there, no NaN
        return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    raise ValueError(f"huber_schedule {schedule!r} is not one of {HUBER_SCHEDULES}")


def elementwise_loss(
    prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "l2", huber_c: torch.Tensor | None = None
) -> torch.Tensor:
    """The loss of every element (float32, the prediction's shape); ``huber_c`` (B,) for the Huber kinds."""
    prediction, target = prediction.float(), target.float()
    if loss_type == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    if loss_type not in ("huber", "smooth_l1"):
        raise ValueError(f"loss_type {loss_type!r} is not one of {LOSS_TYPES}")
    if huber_c is None:
        raise ValueError(f"loss_type {loss_type!r} needs huber_c (from huber_threshold)")
    c = huber_c.to(prediction).view(-1, *([1] * (prediction.ndim - 1)))
    root = torch.sqrt((prediction - target) ** 2 + c**2) - c
    # smooth_l1 is the same curve divided by c: slope 1 for large errors, whatever c is.
    return 2 * c * root if loss_type == "huber" else 2 * root


def debiased_weights(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """Debiased-estimation weights per sample (B,): 1 / sqrt(SNR) (epsilon), 1 / (SNR + 1) (v)."""
    ratio = snr(timesteps, alphas_cumprod).clamp(SNR_FLOOR, SNR_CAP)
    return 1 / (ratio + 1) if prediction_type == "v_prediction" else 1 / ratio.sqrt()


def latent_mask(alpha: torch.Tensor, pixel_scale: int, size: tuple[int, int]) -> torch.Tensor:
    """Loss weights (B, 1, h, w) in [0, 1] of latent cells from the art's alpha, uint8 (B, 1, H, W).

    The alpha is upscaled as the art is (nearest, ``pixel_scale``), then area-averaged to the latent's
    size, so a cell weighs as much as the opaque share of the image pixels the VAE folds into it (kohya's
    ``apply_masked_loss`` area-resizes the image-size mask the same way).
    """
    image = alpha.float() / 255
    if pixel_scale > 1:
        image = image.repeat_interleave(pixel_scale, dim=-2).repeat_interleave(pixel_scale, dim=-1)
    return F.interpolate(image, size=size, mode="area")
