"""How well a base alone draws the demo punks: the figures the pretrained tiny bases are judged by."""

from __future__ import annotations

import torch

from bespoke_pl.data.demo import caption, demo_traits
from bespoke_pl.data.demo_style import demo_measures
from bespoke_pl.diffusion.base import load_base
from bespoke_pl.diffusion.conditioning import encode_prompts
from bespoke_pl.diffusion.sampling import build_pipeline, generate
from bespoke_pl.pixelart.metrics import PixelArtQuality
from bespoke_pl.pixelart.palette import palette_of
from bespoke_pl.pixelart.snap import to_art
from bespoke_pl.tinybases.punks import PIXEL_SCALE, punk_image
from bespoke_pl.tinybases.unet import CLIP_SKIP


@torch.no_grad()
def measure_base(
    base_model: str,
    count: int = 16,
    steps: int = 20,
    guidance_scale: float = 4.0,
    seed: int = 0,
    style: str = "base",
    sampler: str = "euler_a",
) -> dict[str, float]:
    """Generate ``count`` demo punks from a base alone and measure them as the issue of record asks.

    The prompts are the captions of the first ``count`` demo punks (what the base was trained on); the
    references are the first 48 punks of ``style``. Returns the quality metrics of the snapped decodes
    (``silhouette_iou``, ``torso_share``, ``grid_fidelity`` of the raw decode, ...), the same metrics
    prefixed ``art/`` on the samples locked to the references' palette (what the trainer saves and logs as
    ``quality/art/*``), and the demo measures of the snapped decodes (``background_match``,
    ``base_share``, ``neon_share``).

    Args:
        base_model: Anything ``load_base`` takes, e.g. ``tiny-punks:sdxl``.
        count: Samples to generate (seeds ``seed`` ... ``seed + count - 1``).
        steps: Sampling steps.
        guidance_scale: Classifier-free guidance scale.
        seed: First seed.
        style: The demo style whose punks are the reference set.
        sampler: A sampler of :data:`bespoke_pl.diffusion.sampling.SAMPLERS`.
    """

    base = load_base(base_model)
    encoders = base.text_encoders
    captions = [caption(demo_traits(i)) for i in range(count)]
    pipe = build_pipeline(
        base.family, base.unet, base.vae, base.tokenizers, encoders, base.scheduler_config, sampler
    )

    def encode(prompts: list[str]):
        return encode_prompts(prompts, base.tokenizers, encoders, CLIP_SKIP[base.family])

    seeds = list(range(seed, seed + count))
    raw = generate(pipe, encode, captions, seeds, 24 * PIXEL_SCALE, "", steps, guidance_scale)
    reference = torch.stack([punk_image(i, style) for i in range(48)])
    snapped, art = to_art(raw, PIXEL_SCALE, palette_of(reference))
    values = {}
    # As the trainer's samples: grid fidelity judges the decodes, so the locked art has none.
    for grid, decoded, k, prefix in ((snapped, raw, PIXEL_SCALE, ""), (art, None, 1, "art/")):
        quality = PixelArtQuality(reference, k, prefix=prefix, sync_on_compute=False)
        quality.update(grid, raw=decoded)
        values |= {name: float(value) for name, value in quality.compute().items()}
    return values | demo_measures(snapped, captions)
