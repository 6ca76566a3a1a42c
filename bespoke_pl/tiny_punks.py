"""The pretrained tiny bases shipped in the package, and how well a base draws the demo punks.

``tiny-punks:sdxl`` and ``tiny-punks:sd15`` name diffusers folders under ``bespoke_pl/pretrained/``, made
by :mod:`bespoke_pl.pretrain` (``python -m bespoke_pl pretrain-tiny``). They are loaded by the same
``from_pretrained`` code as the real models. Unlike ``tiny:*`` (random weights, for unit tests) they draw
base-style punks, so samples, metrics and tests of a LoRA trained on them mean something.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from bespoke_pl.tiny import FAMILIES

log = logging.getLogger(__name__)

TINY_PUNKS_PREFIX = "tiny-punks:"
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def tiny_punks_path(family: str) -> Path:
    """The shipped folder of the pretrained tiny ``family`` base."""
    return PRETRAINED_DIR / f"tiny-punks-{family}"


def resolve_tiny_punks(spec: str) -> str | None:
    """Returns the folder for ``"tiny-punks:sd15"`` / ``"tiny-punks:sdxl"``, or None for any other spec.

    Raises:
        ValueError: The spec starts with ``"tiny-punks:"`` but names no family, or the folder is missing.
    """
    if not spec.startswith(TINY_PUNKS_PREFIX):
        return None
    family = spec.removeprefix(TINY_PUNKS_PREFIX)
    if family not in FAMILIES:
        valid = ", ".join(TINY_PUNKS_PREFIX + f for f in FAMILIES)
        raise ValueError(f"unknown pretrained tiny model {spec!r}; valid: {valid}")
    path = tiny_punks_path(family)
    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"{spec}: {path} is missing from this installation; rebuild it with "
            f"python -m bespoke_pl pretrain-tiny --family {family} --out {path}"
        )
    return str(path)


@torch.no_grad()
def measure_base(
    base_model: str,
    count: int = 16,
    steps: int = 20,
    guidance_scale: float = 4.0,
    seed: int = 0,
    style: str = "base",
) -> dict[str, float]:
    """Generate ``count`` demo punks from a base alone and measure them as the issue of record asks.

    The prompts are the captions of the first ``count`` demo punks (what the base was trained on); the
    references are the first 48 punks of ``style``. Returns the quality metrics (``silhouette_iou``,
    ``torso_share``, ``grid_fidelity`` of the raw decode, ...) and the demo measures (``background_match``,
    ``base_share``, ``neon_share``).

    Args:
        base_model: Anything ``load_base`` takes, e.g. ``tiny-punks:sdxl``.
        count: Samples to generate (seeds ``seed`` ... ``seed + count - 1``).
        steps: Euler steps.
        guidance_scale: Classifier-free guidance scale.
        seed: First seed.
        style: The demo style whose punks are the reference set.
    """
    from bespoke_pl.base import load_base
    from bespoke_pl.conditioning import encode_prompts
    from bespoke_pl.demo_data import caption, demo_traits
    from bespoke_pl.demo_style import demo_measures
    from bespoke_pl.metrics import PixelArtQuality
    from bespoke_pl.pixels import reduce_blocks
    from bespoke_pl.pretrain import CLIP_SKIP, PIXEL_SCALE, punk_image
    from bespoke_pl.sampling import build_pipeline, generate

    base = load_base(base_model)
    encoders = base.text_encoders
    captions = [caption(demo_traits(i)) for i in range(count)]
    pipe = build_pipeline(
        base.family, base.unet, base.vae, base.tokenizers, encoders, base.scheduler_config, "euler"
    )

    def encode(prompts: list[str]):
        return encode_prompts(prompts, base.tokenizers, encoders, CLIP_SKIP[base.family])

    seeds = list(range(seed, seed + count))
    raw = generate(pipe, encode, captions, seeds, 24 * PIXEL_SCALE, "", steps, guidance_scale)
    reference = torch.stack([punk_image(i, style) for i in range(48)])
    quality = PixelArtQuality(reference, PIXEL_SCALE, sync_on_compute=False)
    quality.update(raw)
    values = {name: float(value) for name, value in quality.compute().items()}
    values |= demo_measures(reduce_blocks(raw, PIXEL_SCALE), captions)
    return values
