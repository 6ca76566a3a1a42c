"""The diffusion training objective in plain torch: timesteps, noising, targets and loss weighting.

The schedule comes from the base model's scheduler config (``alphas_cumprod`` of its DDPM betas), so a
model trained with epsilon or v prediction is trained with its own target. A config with diffusers'
``rescale_betas_zero_snr`` gets the zero-terminal-SNR schedule (Lin et al. 2023, "Common Diffusion Noise
Schedules and Sample Steps are Flawed", Algorithm 1), as diffusers' samplers do with the same config.
"""

from __future__ import annotations

import torch

from bespoke_pl.diffusion.losses import elementwise_loss

PREDICTION_TYPES = ("epsilon", "v_prediction")
# What makes a diffusers scheduler config zero terminal SNR: the rescaled betas, and "trailing" spacing so
# sampling starts at the last timestep, the one of pure noise (the paper's section 3.3).
ZERO_TERMINAL_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al.'s Algorithm 1: betas whose sqrt(alpha_bar) is shifted to end at 0 and scaled to start as
    before, so the last timestep is pure noise (SNR 0) and the first keeps its SNR."""
    root = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alphas_bar = root**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def zero_terminal_snr_config(config: dict) -> dict:
    """A scheduler config with the zero-terminal-SNR schedule, for training and diffusers' samplers."""
    return {**config, **ZERO_TERMINAL_SNR}


def alphas_cumprod_from_config(config: dict) -> torch.Tensor:
    """The cumulative product of alphas (T,) from a diffusers scheduler config, as DDPM defines it."""
    steps = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    schedule = config.get("beta_schedule", "scaled_linear")
    if schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    else:
        raise ValueError(f"beta_schedule {schedule!r} is not supported (scaled_linear, linear)")
    if config.get("rescale_betas_zero_snr"):
        betas = rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0).float()


def sample_timesteps(batch: int, num_timesteps: int, generator=None, device=None) -> torch.Tensor:
    """Uniform integer timesteps in [0, T) for each sample (B,)."""
    return torch.randint(0, num_timesteps, (batch,), generator=generator, device=device)


def make_noise(latents: torch.Tensor, noise_offset: float = 0.0, generator=None) -> torch.Tensor:
    """Gaussian noise like ``latents``; ``noise_offset`` adds a per-(sample, channel) constant.

    The offset lets the model learn shifts of overall brightness (flat pixel-art backgrounds) that zero-mean
    noise at every pixel cannot teach it.
    """
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        b, c = latents.shape[:2]
        offset = torch.randn((b, c, 1, 1), generator=generator, device=latents.device, dtype=latents.dtype)
        noise = noise + noise_offset * offset
    return noise


def perturb_noise(noise: torch.Tensor, gamma: float, generator=None) -> torch.Tensor:
    """Input perturbation (Ning et al. 2023, "Input Perturbation Reduces Exposure Bias in Diffusion Models"):
    ``eps + gamma * xi`` with fresh ``xi ~ N(0, I)``, for the noisy input only; the target keeps ``eps``.

    At sampling the model meets inputs made from its own imperfect predictions, never exactly
    ``sqrt(a) x_0 + sqrt(1 - a) eps``; training on slightly perturbed inputs closes that gap.
    """
    if not gamma:
        return noise
    fresh = torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
    return noise + gamma * fresh


def _per_sample(values: torch.Tensor, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.to(timesteps.device)[timesteps].view(-1, *([1] * (ndim - 1)))


def add_noise(
    latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps, computed in float32 for stability."""
    a = _per_sample(alphas_cumprod, timesteps, latents.ndim)
    return (a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()).to(latents.dtype)


def training_target(
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity v = sqrt(a) eps - sqrt(1-a) x_0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        a = _per_sample(alphas_cumprod, timesteps, latents.ndim)
        return a.sqrt() * noise.float() - (1 - a).sqrt() * latents.float()
    raise ValueError(f"prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")


def snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio a_t / (1 - a_t) per sample (B,)."""
    a = alphas_cumprod.to(timesteps.device)[timesteps]
    return a / (1 - a)


def min_snr_weights(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) per sample (B,).

    For epsilon prediction the weight is min(SNR, gamma) / SNR, written min(1, gamma / SNR) so that it is 1,
    its limit, at SNR 0 (zero terminal SNR) instead of 0 / 0; for v prediction the v loss already carries
    a factor SNR + 1, so it is min(SNR, gamma) / (SNR + 1).
    """
    ratio = snr(timesteps, alphas_cumprod)
    if prediction_type == "v_prediction":
        return ratio.clamp(max=gamma) / (ratio + 1)
    return (gamma / ratio).clamp(max=1.0)


def diffusion_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    loss_type: str = "l2",
    huber_c: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss per sample (MSE unless ``loss_type`` says otherwise, see :mod:`~bespoke_pl.diffusion.losses`),
    optionally weighted, averaged over the batch (in float32).

    ``mask`` (B, 1, h, w) weights each latent cell before the mean over all cells, as kohya's masked loss
    does: a half-transparent sprite's loss is about half an opaque one's, and a fully transparent region
    adds nothing.
    """
    elements = elementwise_loss(prediction, target, loss_type, huber_c)
    if mask is not None:
        elements = elements * mask.to(elements)
    per_sample = elements.mean(dim=tuple(range(1, prediction.ndim)))
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()
