"""``python -m bespoke_pl pretrain-tiny``: pretrain a tiny punk base on CPU, or measure one."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bespoke_pl.commands.options import new_folder
from bespoke_pl.diffusion.sampling import Sampler
from bespoke_pl.errors import ConfigError
from bespoke_pl.offline.tiny import Family
from bespoke_pl.tinybases.pretrain import HIGH_NOISE_WEIGHT, NOISE_OFFSET, UNET_LR, pretrain_tiny_punks


def pretrain_tiny(
    family: Family = "sdxl",
    out: str | None = None,
    seed: int = 0,
    vae_steps: int = 4000,
    decoder_steps: int = 1000,
    refine_steps: int = 900,
    unet_steps: int = 5000,
    batch_size: int = 16,
    vae_from: str | None = None,
    unet_from: str | None = None,
    unet_lr: float = UNET_LR,
    threads: int = 2,
    measure: str | None = None,
    samples: int = 16,
    sampler: Sampler = "euler_a",
    noise_offset: float = NOISE_OFFSET,
    high_noise_weight: float = HIGH_NOISE_WEIGHT,
) -> str:
    """Pretrain a tiny punk base on CPU, then print its wall time and how well it draws.

    Example: ``pretrain-tiny --family sdxl --out DIR``, then ``pretrain-tiny --family sd15 --out DIR2
    --vae_from DIR`` (both families share one VAE). ``--measure tiny-punks:sdxl`` only measures a base.

    Args:
        family: ``sd15`` or ``sdxl``.
        out: Folder to write (must not exist or be empty); default ``./tiny-punks-<family>``.
        seed: Seed of the start weights, the data stream and the noise.
        vae_steps: VAE optimizer steps (skipped with ``vae_from``).
        decoder_steps: Decoder-only fine-tuning steps after them.
        refine_steps: Steps of a second decoder fine-tune (any skin colour, a little latent noise).
        unet_steps: UNet optimizer steps.
        batch_size: Images per step.
        vae_from: A tiny-punks folder (or ``tiny-punks:<family>``) whose VAE to reuse instead of training one.
        unet_from: A tiny-punks folder (or ``tiny-punks:<family>``) to go on training: its UNet and text
            encoders start the UNet stage, its VAE is kept; ``--unet_steps`` more steps at ``--unet_lr``.
        unet_lr: Peak learning rate of the UNet stage (cosine after 200 warm-up steps).
        threads: CPU threads; the same seed and thread count give the same weights.
        measure: Measure this base instead of pretraining.
        samples: How many samples the figures are measured on (the issue of record's bar: 16).
        sampler: The sampler of the figures. Euler a: each step's fresh noise is denoised again, so the
            background grain deterministic Euler leaves on a few seeds of the tiny bases goes (see docs/tiny-bases.md).
        noise_offset: Noise offset of the UNet training (with ``high_noise_weight`` 20 it makes the
            samples follow the prompted background; 0 and 1: plain epsilon MSE, the first bases' recipe).
        high_noise_weight: Cap of the UNet loss's high-noise weight ``1 / alpha_bar`` (1: plain epsilon MSE).
    """
    from bespoke_pl.diffusion.base import family_of_folder
    from bespoke_pl.tinybases.measure import measure_base

    if measure is None:
        # The folder is written after the training: a taken --out or a missing --vae_from must fail now.
        folder = new_folder("--out", out or f"tiny-punks-{family}")
        if vae_from is not None:
            vae_from = str(_tiny_punks_folder("--vae_from", vae_from, ("vae",)))
        if unet_from is not None:
            start = _tiny_punks_folder("--unet_from", unet_from, ("unet", "vae"))
            if (found := family_of_folder(start)) != family:
                raise ConfigError(f"--unet_from {unet_from} is an {found} model, not --family {family}")
    torch.set_num_threads(threads)
    lines = []
    if measure is None:
        started = time.perf_counter()
        written = pretrain_tiny_punks(
            family=family,
            out=folder,
            seed=seed,
            vae_steps=vae_steps,
            decoder_steps=decoder_steps,
            refine_steps=refine_steps,
            unet_steps=unet_steps,
            batch_size=batch_size,
            vae_from=vae_from,
            unet_from=unet_from,
            unet_lr=unet_lr,
            noise_offset=noise_offset,
            high_noise_weight=high_noise_weight,
        )
        measure = str(written)
        lines.append(
            f"pretrained {measure} in {time.perf_counter() - started:.0f} s on {threads} CPU threads"
        )
    values = measure_base(measure, count=samples, sampler=sampler)
    lines.append(
        f"{measure}, {samples} samples, {sampler}: " + " ".join(f"{k}={v:.3f}" for k, v in values.items())
    )
    return "\n".join(lines)


def _tiny_punks_folder(flag: str, value: str, parts: tuple[str, ...]) -> Path:
    """The folder a ``--vae_from`` / ``--unet_from`` names (a path or ``tiny-punks:<family>``), checked before
    any training: it must hold ``parts``."""
    from bespoke_pl.diffusion.base import resolve_spec

    folder = Path(resolve_spec(value)).expanduser()
    if missing := [f"{part}/" for part in parts if not (folder / part).is_dir()]:
        raise ConfigError(f"{flag} {value} is not a tiny-punks folder (no {' or '.join(missing)})")
    return folder


def command(argv: list[str]) -> None:
    from bespoke_pl.commands.parsing import run_command

    print(run_command("pretrain-tiny", pretrain_tiny, argv, as_positional=False))
