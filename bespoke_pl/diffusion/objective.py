"""The diffusion training objective in plain torch: the noise schedule, noising, targets and the loss.

The schedule is the one diffusers' schedulers build from the base model's scheduler config (the same
object sampling configures), so every ``beta_schedule`` that samples also trains, and a model trained with
epsilon or v prediction is trained with its own target. A config with diffusers' ``rescale_betas_zero_snr``
gets the zero-terminal-SNR schedule (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
are Flawed", Algorithm 1) in training as in sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bespoke_pl.diffusion.losses import debiased_weights, elementwise_loss, huber_threshold, min_snr_weights

PREDICTION_TYPES = ("epsilon", "v_prediction")
# What makes a diffusers scheduler config zero terminal SNR: the rescaled betas, and "trailing" spacing so
# sampling starts at the last timestep, the one of pure noise (the paper's section 3.3).
ZERO_TERMINAL_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}


def zero_terminal_snr_config(config: dict) -> dict:
    """A scheduler config with the zero-terminal-SNR schedule, for training and diffusers' samplers."""
    return {**config, **ZERO_TERMINAL_SNR}


def alphas_cumprod_from_config(config: dict) -> torch.Tensor:
    """The cumulative product of alphas (T,) float32 of a diffusers scheduler config: DDPM's, as diffusers
    computes it for every sampler built from the same config (unknown ``beta_schedule``: diffusers' error)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config).alphas_cumprod.clone()


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


@dataclass(frozen=True)
class LossOptions:
    """How a prediction is scored: the loss type and the per-timestep weights, composed in :meth:`loss`.

    The defaults are plain MSE (what ``validation_loss='mse'`` measures whatever the training options).
    """

    loss_type: str = "l2"
    min_snr_gamma: float | None = None
    debiased_estimation: bool = False
    huber_c: float = 0.1
    huber_schedule: str = "snr"

    @classmethod
    def of(cls, hparams) -> LossOptions:
        """The options of a module's hyperparameters (a mapping with these names)."""
        return cls(
            loss_type=hparams["loss_type"],
            min_snr_gamma=hparams["min_snr_gamma"],
            debiased_estimation=hparams["debiased_estimation"],
            huber_c=hparams["huber_c"],
            huber_schedule=hparams["huber_schedule"],
        )

    def loss(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        timesteps: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The batch's loss: min-SNR and debiased weights multiplied, the Huber threshold at each timestep."""
        a = alphas_cumprod
        weights = None
        if self.min_snr_gamma:
            weights = min_snr_weights(timesteps, a, self.min_snr_gamma, prediction_type)
        if self.debiased_estimation:
            debiased = debiased_weights(timesteps, a, prediction_type)
            weights = debiased if weights is None else weights * debiased
        huber_c = None
        if self.loss_type in ("huber", "smooth_l1"):
            huber_c = huber_threshold(timesteps, a, self.huber_c, self.huber_schedule)
        return diffusion_loss(prediction, target, weights, self.loss_type, huber_c, mask)
