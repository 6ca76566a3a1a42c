"""``python -m bespoke_pl roundtrip``: the training set through the VAE at several pixel scales.

If the round trip already loses pixels at some k, no amount of training brings them back; this compares
k before a run (``fit`` checks the run's own k, :mod:`bespoke_pl.callbacks.roundtrip`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from torch import nn

from bespoke_pl.commands.options import device_option
from bespoke_pl.data.datamodule import PixelArtDataModule
from bespoke_pl.diffusion.base import detect_family, load_base, resolve_spec
from bespoke_pl.errors import BaseModelError
from bespoke_pl.pixelart.roundtrip import RoundTrip, vae_round_trip

log = logging.getLogger(__name__)

DEFAULT_SCALES = [1, 8, 16, 24, 40]


def load_vae(base_model: str, base_config: str | None = None) -> nn.Module:
    """Only the VAE of a base model (a folder or hub id), or the whole base for a single file.

    Raises:
        BaseModelError: The model has no readable VAE.
    """
    from diffusers import AutoencoderKL

    spec = resolve_spec(base_model)
    source = Path(spec).expanduser()
    if source.is_file():
        return load_base(base_model, "auto", base_config).vae.float()
    try:
        vae = AutoencoderKL.from_pretrained(str(source) if source.is_dir() else spec, subfolder="vae")
    except OSError as error:  # diffusers' "does not appear to have a file named ...": no vae/ there
        raise BaseModelError(f"cannot read the VAE of base model {base_model}: {error}") from error
    return vae.float().requires_grad_(False).eval()


def roundtrip(
    base_model: str,
    data_root: str,
    scales: list[int] | None = None,
    base_config: str | None = None,
    resolution: int = 24,
    background: str | None = None,
    max_images: int = 0,
    batch_size: int = 8,
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto",
) -> list[RoundTrip]:
    """Round-trip the training images through the base model's VAE at each pixel scale.

    Args:
        base_model: Hub id, local diffusers folder, single file, or ``tiny:sd15`` / ``tiny:sdxl``.
        data_root: The training folder (or ``demo:punks``).
        scales: Pixel scales k to try (default 1 8 16 24 40: the fast configs' 8, sd15.yaml's 24, sdxl.yaml's 40).
        base_config: For a single-file base: where to read component configs from.
        resolution: Side of the training images.
        background: Colour under transparent pixels (as for training).
        max_images: Round-trip only the first N images; 0: all.
        batch_size: Images per VAE call.
        device: ``auto`` (CUDA, else Apple MPS, else CPU), ``cuda``, ``mps`` or ``cpu``.
    """
    target = device_option(device)
    # A missing folder, a folder that is no model, a hub id not cached while offline: the base model's
    # one-line error first, not diffusers' traceback after the data (and after its retries of the hub).
    detect_family(resolve_spec(base_model))
    data = PixelArtDataModule(data_root, resolution, background=background, default_caption="")
    pairs = data.load()
    images = pairs.images[:max_images] if max_images > 0 else pairs.images
    vae = load_vae(base_model, base_config).to(target)
    palette = pairs.palette  # the whole set's, as fit's check locks to, also for a --max_images subset
    results = []
    for k in scales or DEFAULT_SCALES:
        result = vae_round_trip(vae, images, k, palette, batch_size)
        log.debug("VAE round trip %s", result.line())  # the command prints each line once, at the end
        results.append(result)
    return results


def join_list_values(argv: list[str], flag: str) -> list[str]:
    """Let ``--scales 1 8 16`` mean ``--scales [1,8,16]`` (jsonargparse takes one value per flag)."""
    if flag not in argv:
        return argv
    start = argv.index(flag) + 1
    end = start
    while end < len(argv) and not argv[end].startswith("--"):
        end += 1
    if end - start <= 1:
        return argv
    return argv[:start] + [f"[{','.join(argv[start:end])}]"] + argv[end:]


def command(argv: list[str]) -> None:
    from bespoke_pl.commands.parsing import run_command

    results = run_command("roundtrip", roundtrip, join_list_values(argv, "--scales"), as_positional=False)
    print("\n".join(result.line() for result in results))
