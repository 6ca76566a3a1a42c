"""Which timesteps a training step draws: a range of the schedule, and densities other than uniform.

A sampler draws a continuous ``u`` in [0, 1) (0: no noise, 1: pure noise), optionally shifts it towards
the noisy end, and maps it onto the integer DDPM timesteps ``[t_min, t_max)`` of the base's schedule:

- ``uniform``: every timestep of the range equally often (SD's own training; kohya's ``min_timestep`` /
  ``max_timestep`` narrow the range);
- ``logit_normal``: ``u = sigmoid(n)``, ``n ~ N(mean, std)`` (Esser et al. 2024, SD3, section 3.1): the
  middle timesteps, where the image's structure is decided, drawn more often than the ends;
- ``shift`` > 1: ``u' = s u / (1 + (s - 1) u)`` (SD3's and flux's resolution shift), applied after either
  density: more steps at high noise (composition, flat colour areas), < 1: more at low noise (detail).

Uniform without a shift keeps ``torch.randint``, so a run with the default options draws exactly the
timesteps it drew before these options existed (and resumes exactly either way: every draw comes from
torch's global generator, which the checkpoint restores).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

TimestepSampling = Literal["uniform", "logit_normal"]
TIMESTEP_SAMPLINGS: tuple[str, ...] = get_args(TimestepSampling)


def shift_time(u: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's timestep shift of ``u`` in [0, 1]: ``s u / (1 + (s - 1) u)``; 0 and 1 stay, s = 1 is the identity."""
    return shift * u / (1 + (shift - 1) * u)


def to_discrete(u: torch.Tensor, t_min: int, t_max: int) -> torch.Tensor:
    """Map ``u`` in [0, 1] onto the integer timesteps ``[t_min, t_max)``, each an equal share of [0, 1)."""
    steps = (u.double() * (t_max - t_min)).floor().long() + t_min
    return steps.clamp(t_min, t_max - 1)  # u == 1 (a shift or sigmoid can round to it) is the last step


def sample_training_timesteps(
    batch: int,
    num_timesteps: int,
    sampling: str = "uniform",
    t_min: int = 0,
    t_max: int | None = None,
    shift: float = 1.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Integer timesteps (B,) in ``[t_min, t_max)`` (``t_max`` unset: ``num_timesteps``).

    Args:
        batch: How many timesteps to draw.
        num_timesteps: T of the base's schedule (``num_train_timesteps``).
        sampling: ``uniform`` or ``logit_normal``.
        t_min: First timestep that may be drawn.
        t_max: One past the last timestep that may be drawn (kohya's ``max_timestep``); unset: T.
        shift: SD3 shift of the drawn ``u``; 1 leaves it as drawn.
        logit_mean: Mean of the normal whose sigmoid is ``u`` (``logit_normal`` only).
        logit_std: Its standard deviation.
        generator: Where the draws come from; unset: torch's global generator.
        device: Device of the result.
    """
    t_max = num_timesteps if t_max is None else t_max
    if not 0 <= t_min < t_max <= num_timesteps:
        raise ValueError(
            f"timestep range [{t_min}, {t_max}) is not inside the schedule's [0, {num_timesteps})"
        )
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timestep sampling {sampling!r} is not one of {TIMESTEP_SAMPLINGS}")
    if sampling == "uniform" and shift == 1.0:
        return torch.randint(t_min, t_max, (batch,), generator=generator, device=device)
    if sampling == "logit_normal":
        normal = torch.randn((batch,), generator=generator, dtype=torch.float64)
        u = torch.sigmoid(normal * logit_std + logit_mean)
    else:
        u = torch.rand((batch,), generator=generator, dtype=torch.float64)
    return to_discrete(shift_time(u, shift), t_min, t_max).to(device)
